"""Hot loops that bin response values against the threshold grid.

``bin_values(x, thresholds)`` takes a 2-D ``(inputs, units)`` float32 or
float64 array and the grid converted to that dtype by ``native_thresholds``
(``G`` values), and returns for that batch:

- ``unit_cumulative``: unsigned counts in blocks of units,
  ``(blocks, G + 2, BLOCK)`` (``from_blocks`` gives the ``(G + 2, units)``
  view): the number of inputs on which unit ``u`` fell in bin ``k`` or
  below. Bin ``k <= G`` contains ``thresholds[k-1] < |x| <= thresholds[k]``
  (bin 0 is ``|x| <= thresholds[0]``, bin ``G`` is above every threshold)
  and bin ``G + 1`` contains NaN and +-inf. Row ``j < G`` is thus the count
  of inputs with ``|x| <= thresholds[j]``. Blocks keep each thread's
  counters contiguous in cache;
- ``input_cumulative``: ``(inputs, G + 2)`` int64, inputs' counts in bin
  ``k`` or below.

Passing the same ``scratch`` dict on every call for one layer reuses its
buffers, which saves the page faults of fresh allocations; the returned
arrays are views into it, valid until the next call with that ``scratch``.

The numba kernel finds a value's bin from its bit pattern: for non-negative
IEEE floats, integer order of the bits is numeric order, so the top bits
(exponent and a few mantissa bits, rounded up) index a table giving the
number of thresholds below that bucket, and one integer comparison against
the threshold strictly inside the bucket, if any, finishes the job. Batches
with many exact zeros go to a second kernel that counts zeros with vector
instructions and bins only the other values. On CPUs with AVX-512 a third
kernel takes float32 batches on grids with at most one threshold per binary
exponent, like the default one. It finds sixteen bins at a time from the
exponent with in-register table permutes, then counts them. On batches with
many exact zeros it packs the other values first and counts only those.
When numba is missing a numpy kernel gives the same counts, after a
one-time warning.
``IUA_WIDGETS_KERNEL=numpy`` forces the numpy kernel and
``IUA_WIDGETS_KERNEL=scalar`` the compiled kernels without AVX-512.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import warnings

import numpy as np

logger = logging.getLogger(__name__)

try:
    import llvmlite
    import numba
    from llvmlite import ir as llvm_ir
    from numba.core import cgutils, types
    from numba.core.errors import NumbaError
    from numba.cpython.unsafe.numbers import trailing_zeros
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised by forcing the numpy path
    numba = None

#: Inputs per kernel call, so per-batch unit counts fit uint16.
_SUB_BATCH = 65535
#: Units binned by one thread before it takes the next block (``2**_BLOCK_BITS``),
#: sized to keep the block's counters in L1.
_BLOCK_BITS = 8
_UNIT_BLOCK = 1 << _BLOCK_BITS
#: Rows the vector kernel goes through block by block, prefetching the next ones.
_GROUP_ROWS = 8
#: Most blocks of one stripe of the vector kernel (8 KiB of float32 per row).
_STRIPE_BLOCKS = 8
#: Bytes per cache line, the prefetch step.
_CACHE_LINE = 64
#: Whether llvmlite writes typed-pointer IR (its default), which sets the prefetch intrinsic's name.
_TYPED_POINTERS = numba is not None and getattr(llvmlite, "ir_layer_typed_pointers_enabled", True)
#: Entries of the vector kernel's tables: one per binary exponent (octave) of
#: the grid, the first for every value below, the last for every value above.
_OCTAVES = 64


def _host_has_avx512() -> bool:
    """Return whether numba compiles for this CPU and the CPU has AVX-512F (for the permutes)."""
    if numba is None or numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        return False
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - unknown host: use the portable kernels
        return False


_AVX512 = _host_has_avx512()
#: Held while a parallel kernel runs. numba's workqueue threading layer, the
#: one left when neither OpenMP nor TBB loads, aborts the process when two
#: Python threads launch parallel kernels at once. A stream thread and a
#: slider moved in the notebook would do that.
_PARALLEL_LAUNCH = threading.Lock()


def _stop_vector_kernel(error: Exception) -> None:
    """Fall back to the portable kernels for the rest of the process, with a warning."""
    global _AVX512
    _AVX512 = False
    warnings.warn(
        f"iua_widgets could not compile its AVX-512 kernel ({type(error).__name__}: {error}), "
        "so it uses its portable kernels from now on (same results, slower). "
        "Please report this with your CPU model and numba version.",
        RuntimeWarning,
        stacklevel=4,
    )


def _layout(dtype: np.dtype):
    """Unsigned view type, mantissa width and magnitude mask of a float dtype."""
    if dtype == np.float32:
        return np.uint32, 23, np.uint32(0x7FFFFFFF)
    return np.uint64, 52, np.uint64(0x7FFFFFFFFFFFFFFF)


@functools.lru_cache(maxsize=32)
def _bucket_tables_cached(threshold_bytes: bytes, dtype_str: str):
    dtype = np.dtype(dtype_str)
    thresholds = np.frombuffer(threshold_bytes, dtype=dtype)
    uint, mantissa_bits, mask = _layout(dtype)
    # The largest finite value closes the last finite bin, so NaN and inf,
    # whose bit patterns lie above it, land in bin len(thresholds) + 1.
    largest = np.array([np.finfo(dtype).max], dtype=dtype)
    bits = np.concatenate([thresholds, largest]).view(uint).astype(np.uint64)
    # Bucket b contains the bit patterns in ((b - 1) * size, b * size], found as
    # (a + size - 1) >> shift. A threshold on a bucket's upper end, like 0, then
    # needs no comparison. Start with few mantissa bits per bucket (6 for
    # float32, 3 for float64) to keep the tables small. The 1-2-5 grid puts at
    # most one threshold inside a bucket, but an atol close to a grid value
    # may need finer buckets.
    for kept_bits in range(3 if dtype == np.float64 else 6, 11):
        shift = mantissa_bits - kept_bits
        size = 1 << shift
        buckets = ((int(mask) + size - 1) >> shift) + 1
        upper = np.arange(buckets, dtype=np.uint64) << np.uint64(shift)
        lower = np.maximum(upper, np.uint64(size)) - np.uint64(size)
        below = np.searchsorted(bits, lower, side="right")
        inside = np.searchsorted(bits, upper, side="left") - below
        below[0], inside[0] = 0, 0  # bucket 0 contains the bit pattern 0 alone
        if inside.max() <= 1:
            break
    else:
        return None
    table = below.astype(np.uint8)  # at most 250 thresholds, see grid.MAX_GRID_SIZE
    # The threshold strictly inside each bucket, or the largest bit pattern.
    single = np.full(buckets, np.iinfo(uint).max, dtype=uint)
    single[inside == 1] = bits[below[inside == 1]]
    return table, single, uint(shift), uint(size - 1)


def bucket_tables(thresholds: np.ndarray):
    """Lookup tables for the bit-pattern kernel, or ``None`` if thresholds are too close."""
    return _bucket_tables_cached(thresholds.tobytes(), thresholds.dtype.str)


@functools.lru_cache(maxsize=32)
def _octave_tables_cached(threshold_bytes: bytes):
    thresholds = np.frombuffer(threshold_bytes, dtype=np.float32)
    largest = np.array([np.finfo(np.float32).max], dtype=np.float32)
    bits = np.concatenate([thresholds, largest]).view(np.uint32)
    exponents = (bits >> 23).astype(np.int64)
    positive = exponents[bits > 0]
    # Octave 0 of the table contains 0 and everything below the smallest
    # positive threshold's octave, the last one everything from it up.
    low = int(positive.min()) - 1 if positive.size else 0
    octave = np.clip(exponents - low, 0, _OCTAVES - 1)
    if np.bincount(octave, minlength=_OCTAVES).max() > 1:
        return None  # two thresholds in one octave: the bucket kernels handle it
    below = np.searchsorted(octave, np.arange(_OCTAVES), side="left").astype(np.uint32)
    single = np.full(_OCTAVES, np.iinfo(np.uint32).max, dtype=np.uint32)
    single[octave] = bits
    return below, single, low


def octave_tables(thresholds: np.ndarray):
    """Return the tables of the AVX-512 kernel, or ``None`` when it does not apply.

    It applies to float32 grids with at most one threshold per binary
    exponent, as the 1-2-5 grid has (consecutive values at least twice
    apart). A value of magnitude bits ``a`` is in octave ``j``: its exponent
    less ``low``, clipped to the table. ``below[j]`` thresholds are below
    every value of the octave, and ``a`` is compared with ``single[j]``, the
    octave's threshold or the largest bit pattern.
    """
    if thresholds.dtype != np.float32:
        return None
    return _octave_tables_cached(thresholds.tobytes())


def to_blocks(unit_cumulative: np.ndarray) -> np.ndarray:
    """Reshape ``(bins, units)`` counts to the kernels' ``(blocks, bins, block)`` layout."""
    bins, units = unit_cumulative.shape
    blocks = -(-units // _UNIT_BLOCK)
    padded = np.zeros((bins, blocks * _UNIT_BLOCK), dtype=unit_cumulative.dtype)
    padded[:, :units] = unit_cumulative
    return np.ascontiguousarray(padded.reshape(bins, blocks, _UNIT_BLOCK).transpose(1, 0, 2))


def from_blocks(blocked: np.ndarray, units: int) -> np.ndarray:
    """Inverse of ``to_blocks``: the ``(bins, units)`` view of blocked counts."""
    blocks, bins, block = blocked.shape
    return blocked.transpose(1, 0, 2).reshape(bins, blocks * block)[:, :units]


def bin_numpy(x: np.ndarray, thresholds: np.ndarray):
    """Bin ``x`` with numpy only (``searchsorted`` and ``bincount``)."""
    inputs, units = x.shape
    bins = len(thresholds) + 2
    magnitude = np.abs(x)
    # searchsorted(side="left") counts thresholds strictly below |x|, which is
    # the bin of |x|; NaN and inf get the bin of their own.
    k = np.searchsorted(thresholds, magnitude, side="left")
    k[~np.isfinite(magnitude)] = bins - 1
    unit_index = k * units + np.arange(units)
    unit_hist = np.bincount(unit_index.ravel(), minlength=bins * units)
    input_index = np.arange(inputs)[:, None] * bins + k
    input_hist = np.bincount(input_index.ravel(), minlength=inputs * bins)
    unit_cumulative = np.cumsum(unit_hist.reshape(bins, units), axis=0).astype(np.uint32)
    input_cumulative = np.cumsum(input_hist.reshape(inputs, bins), axis=1, dtype=np.int64)
    return to_blocks(unit_cumulative), input_cumulative


if numba is not None:

    def _prefetch_intrinsic(locality):
        """Return an intrinsic asking the CPU to start loading ``array[index]`` (``llvm.prefetch``).

        ``locality`` 3 loads into every cache level, 2 stops short of L1.
        """

        @intrinsic
        def prefetch(typingctx, array, index):
            if not isinstance(array, types.Array):
                return None

            def codegen(context, builder, signature, args):
                array_type = signature.args[0]
                view = context.make_array(array_type)(context, builder, args[0])
                pointer = cgutils.get_item_pointer(
                    context, builder, array_type, view, [args[1]], wraparound=False
                )
                byte_pointer = llvm_ir.IntType(8).as_pointer()
                i32 = llvm_ir.IntType(32)
                function_type = llvm_ir.FunctionType(
                    llvm_ir.VoidType(), [byte_pointer, i32, i32, i32]
                )
                name = "llvm.prefetch.p0i8" if _TYPED_POINTERS else "llvm.prefetch.p0"
                function = cgutils.get_or_insert_function(builder.module, function_type, name)
                # Read access, the locality, data cache.
                builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0),
                                        i32(locality), i32(1)])
                return context.get_dummy_value()

            return types.void(array, index), codegen

        return prefetch

    _prefetch = _prefetch_intrinsic(3)
    _prefetch_to_l2 = _prefetch_intrinsic(2)

    @numba.njit(inline="always")
    def _bin(a, table, single, shift, bias):
        # Bin of the magnitude bits a: the entry of its bucket, plus one when the
        # threshold inside the bucket, if any, is below a. Every value is compared,
        # because a branch on the few buckets with a threshold ran 4 times slower
        # on data where half the values fall in such a bucket.
        b = (a + bias) >> shift
        return numba.uint64(table[b]) + numba.uint64(single[b] < a)

    @numba.njit(inline="always")
    def _prefetch_row(row, start, stop, line, to_l1=True):
        # Successive rows of a block are a whole row apart, so the hardware
        # prefetcher misses them. Prefetching measured 5 to 15 % faster.
        for u in range(start, stop, line):
            if to_l1:
                _prefetch(row, u)
            else:
                _prefetch_to_l2(row, u)

    @numba.njit(inline="always")
    def _block_span(block, units, bins):
        # Units start:stop of a block and the offset of its counters in unit_hist.
        start = block * _UNIT_BLOCK
        return start, min(units, start + _UNIT_BLOCK), block * bins * _UNIT_BLOCK

    @numba.njit(inline="always")
    def _open_block(block, units, bins, unit_hist, accumulate):
        # _block_span, with the block's counters zeroed unless accumulating.
        start, stop, offset = _block_span(block, units, bins)
        if not accumulate:
            unit_hist[offset : offset + bins * _UNIT_BLOCK] = 0
        return start, stop, offset

    @numba.njit(inline="always")
    def _running_sum(unit_hist, offset, bins):
        # Running sum over the bins of one block, while it is still in cache.
        for k in range(1, bins):
            row_start = offset + k * _UNIT_BLOCK
            for u in range(_UNIT_BLOCK):
                unit_hist[row_start + u] += unit_hist[row_start - _UNIT_BLOCK + u]

    def _block_row_intrinsic(packed):
        """Return an intrinsic binning the float32 bits ``row[start:start + BLOCK]``.

        AVX-512 only: sixteen values at a time, the octave tables of
        ``octave_tables`` are looked up with in-register permutes
        (``vpermi2d``), which spares the two scalar table loads per value.
        The plain intrinsic writes the bins to ``out`` (uint8). The packed one
        adds the values in bin 0 to ``unit_hist[offset:offset + BLOCK]`` (the
        block's bin 0), writes ``bin << 8 | unit`` for every other value to
        ``entries`` (uint32, ``BLOCK + 16`` long), compressed to the front,
        and returns their number.
        """

        def codegen(context, builder, signature, args):
            row_type, _, below_type, single_type = signature.args[:4]

            def data(array_type, value):
                return context.make_array(array_type)(context, builder, value).data

            i16, i32, i64 = llvm_ir.IntType(16), llvm_ir.IntType(32), llvm_ir.IntType(64)
            vector = llvm_ir.VectorType(i32, 16)
            narrow = llvm_ir.VectorType(llvm_ir.IntType(8), 16)
            flags = llvm_ir.VectorType(llvm_ir.IntType(1), 16)

            def splat(value):
                return llvm_ir.Constant(vector, [value] * 16)

            def load(pointer, offset):
                index = i64(offset) if isinstance(offset, int) else offset
                address = builder.gep(pointer, [index])
                return builder.load(builder.bitcast(address, vector.as_pointer()), align=4)

            def function(name, result, *arguments):
                function_type = llvm_ir.FunctionType(result, list(arguments))
                return cgutils.get_or_insert_function(builder.module, function_type, name)

            permute = function("llvm.x86.avx512.vpermi2var.d.512", vector, vector, vector, vector)
            # The register form: compressing straight to memory ran 2.7 times slower.
            compress = function(
                "llvm.x86.avx512.mask.compress.v16i32", vector, vector, vector, flags
            )
            popcount = function("llvm.ctpop.i16", i16, i16)

            def lookup(table, octave, upper_half):
                # 64 entries in four registers: vpermi2d picks from two of them.
                lower = builder.call(permute, [table[0], octave, table[1]])
                upper = builder.call(permute, [table[2], octave, table[3]])
                return builder.select(upper_half, upper, lower)

            below_rows = [load(data(below_type, args[2]), 16 * j) for j in range(4)]
            single_rows = [load(data(single_type, args[3]), 16 * j) for j in range(4)]

            def broadcast(value):
                lane = builder.insert_element(llvm_ir.Constant(vector, None), value, i32(0))
                return builder.shuffle_vector(lane, llvm_ir.Constant(vector, None), splat(0))

            low = broadcast(builder.trunc(args[4], i32))
            values = builder.gep(data(row_type, args[0]), [args[1]])
            if packed:
                entries = data(signature.args[5], args[5])
                hist_type = signature.args[6]
                counters = llvm_ir.VectorType(context.get_data_type(hist_type.dtype), 16)
                zero_bin = builder.gep(data(hist_type, args[6]), [args[7]])
            else:
                out_data = data(signature.args[5], args[5])
            count = cgutils.alloca_once_value(builder, i64(0))
            # A loop rather than unrolled code: as fast, and less to compile.
            with cgutils.for_range(builder, i64(_UNIT_BLOCK // 16)) as loop:
                first = builder.mul(loop.index, i64(16))
                magnitude = builder.and_(load(values, first), splat(0x7FFFFFFF))
                octave = builder.sub(builder.lshr(magnitude, splat(23)), low)
                below_table = builder.icmp_signed("<", octave, splat(0))
                octave = builder.select(below_table, splat(0), octave)
                last = splat(_OCTAVES - 1)
                octave = builder.select(builder.icmp_signed(">", octave, last), last, octave)
                upper_half = builder.icmp_unsigned("!=", builder.and_(octave, splat(32)), splat(0))
                threshold = lookup(single_rows, octave, upper_half)
                above = builder.icmp_unsigned("<", threshold, magnitude)
                k = builder.add(lookup(below_rows, octave, upper_half), builder.zext(above, vector))
                if not packed:
                    target = builder.bitcast(builder.gep(out_data, [first]), narrow.as_pointer())
                    builder.store(builder.trunc(k, narrow), target, align=1)
                else:
                    outside = builder.icmp_unsigned("!=", k, splat(0))
                    target = builder.bitcast(builder.gep(zero_bin, [first]), counters.as_pointer())
                    inside = builder.zext(builder.not_(outside), counters)
                    counted = builder.add(builder.load(target, align=2), inside)
                    builder.store(counted, target, align=2)
                    units = builder.add(broadcast(builder.trunc(first, i32)),
                                        llvm_ir.Constant(vector, list(range(16))))
                    entry = builder.or_(builder.shl(k, splat(_BLOCK_BITS)), units)
                    front = builder.call(compress, [entry, splat(0), outside])
                    written = builder.load(count)
                    target = builder.bitcast(builder.gep(entries, [written]), vector.as_pointer())
                    builder.store(front, target, align=4)
                    added = builder.call(popcount, [builder.bitcast(outside, i16)])
                    builder.store(builder.add(written, builder.zext(added, i64)), count)
            count = builder.load(count)
            return count if packed else context.get_dummy_value()

        if packed:

            @intrinsic
            def bin_block_row_packed(typingctx, row, start, below, single, low, entries, unit_hist,
                                     offset):
                signature = types.int64(row, start, below, single, low, entries, unit_hist, offset)
                return signature, codegen

            return bin_block_row_packed

        @intrinsic
        def bin_block_row(typingctx, row, start, below, single, low, out):
            return types.void(row, start, below, single, low, out), codegen

        return bin_block_row

    _bin_block_row = _block_row_intrinsic(packed=False)
    _bin_block_row_packed = _block_row_intrinsic(packed=True)

    @numba.njit(inline="always")
    def _count_row(row_bins, width, unit_hist, offset, lane_hist, lanes, lane_stride):
        # Count the bins of one block row: its units' and, in four lanes, its input's.
        for u in range(width):
            unit = numba.uint64(u)
            k = numba.uint64(row_bins[unit])
            unit_hist[numba.uint64(offset) + unit + k * numba.uint64(_UNIT_BLOCK)] += 1
            lane_hist[lanes + (unit & numba.uint64(3)) * lane_stride + k] += 1

    @numba.njit(inline="always")
    def _count_entries(entries, count, unit_hist, offset, lane_hist, lanes, lane_stride):
        # _count_row for a block row whose values outside bin 0 are packed in
        # entries (the units' bin 0 is already counted).
        lane_hist[lanes] += _UNIT_BLOCK - count
        for j in range(count):
            # bin << 8 | unit is also the counter's place in the block.
            entry = numba.uint64(entries[j])
            unit_hist[numba.uint64(offset) + entry] += 1
            k = entry >> numba.uint64(_BLOCK_BITS)
            lane_hist[lanes + (numba.uint64(j) & numba.uint64(3)) * lane_stride + k] += 1

    @numba.njit(cache=True, nogil=True, parallel=True, boundscheck=False)
    def _bin_vector_kernel(bits, table, single, shift, bias, mask, below, octave_single, low,
                           unit_hist, lane_hist, line, accumulate, row_bins, packed, entries,
                           stripe_blocks):
        # _bin_table_kernel in two steps per block row: the bins of its values
        # into row_bins (threads, BLOCK) with AVX-512 (the bucket tables for a
        # last, partial block), then the counters. With packed, whole blocks
        # count bin 0 with vector instructions and pack the other values into
        # entries (threads, BLOCK + 16), to count from there. That pays from
        # about a third of zeros on. Only called on AVX-512 hosts: elsewhere
        # the intrinsics do not compile.
        # Threads take stripes of stripe_blocks blocks and go through them
        # _GROUP_ROWS rows at a time, block by block, while prefetching the
        # stripe's part of the next rows into L2. Memory is then read in whole
        # stretches of rows, which ran 20 to 30 % faster than a block's 256
        # rows one by one.
        inputs, units = bits.shape
        blocks = (units + _UNIT_BLOCK - 1) >> _BLOCK_BITS
        bins = unit_hist.shape[0] // (blocks * _UNIT_BLOCK)
        lane_stride = numba.uint64(bins)
        stripes = (blocks + stripe_blocks - 1) // stripe_blocks
        for stripe in numba.prange(stripes):
            c = numba.get_thread_id()
            out = row_bins[c]
            first = stripe * stripe_blocks
            last = min(blocks, first + stripe_blocks)
            stripe_stop = min(units, last * _UNIT_BLOCK)
            for block in range(first, last):
                _open_block(block, units, bins, unit_hist, accumulate)
            for group in range(0, inputs, _GROUP_ROWS):
                group_stop = min(inputs, group + _GROUP_ROWS)
                ahead = min(inputs, group_stop + _GROUP_ROWS) - group_stop
                for block in range(first, last):
                    # This block's share of the next group's rows.
                    share = block - first
                    for r in range(group_stop + share * ahead // (last - first),
                                   group_stop + (share + 1) * ahead // (last - first)):
                        _prefetch_row(bits[r], first * _UNIT_BLOCK, stripe_stop, line, False)
                    start, stop, offset = _block_span(block, units, bins)
                    width = numba.uint64(stop - start)
                    for i in range(group, group_stop):
                        row = bits[i]
                        lanes = numba.uint64((c * inputs + i) * 4 * bins)
                        if width == _UNIT_BLOCK and packed:
                            count = _bin_block_row_packed(row, numba.uint64(start), below,
                                                          octave_single, low, entries[c],
                                                          unit_hist, offset)
                            _count_entries(entries[c], count, unit_hist, offset, lane_hist,
                                           lanes, lane_stride)
                        elif width == _UNIT_BLOCK:
                            _bin_block_row(row, numba.uint64(start), below, octave_single, low, out)
                            # A constant count here measured faster than width.
                            _count_row(out, _UNIT_BLOCK, unit_hist, offset, lane_hist, lanes,
                                       lane_stride)
                        else:
                            for u in range(width):
                                out[u] = _bin(row[numba.uint64(start) + u] & mask, table, single,
                                              shift, bias)
                            _count_row(out, width, unit_hist, offset, lane_hist, lanes, lane_stride)
            if not accumulate:
                for block in range(first, last):
                    _running_sum(unit_hist, _block_span(block, units, bins)[2], bins)

    @numba.njit(cache=True, nogil=True, parallel=True, boundscheck=False)
    def _bin_table_kernel(bits, table, single, shift, bias, mask, unit_hist, lane_hist, line,
                          accumulate):
        # unit_hist is (blocks, bins, BLOCK) and lane_hist (threads, inputs, 4, bins),
        # both flattened, lane_hist zeroed. With accumulate, unit_hist keeps its
        # counts and gains this batch's per-bin counts, otherwise it becomes this
        # batch's running sums. Unsigned flat indices spare numba's negative-index
        # checks, which cost a third of the time of this loop.
        inputs, units = bits.shape
        blocks = (units + _UNIT_BLOCK - 1) >> _BLOCK_BITS
        bins = unit_hist.shape[0] // (blocks * _UNIT_BLOCK)
        lane_stride = numba.uint64(bins)
        # bin_numba hands blocks one at a time to whichever thread is free, so
        # lanes are per thread.
        for block in numba.prange(blocks):
            c = numba.get_thread_id()
            start, stop, offset = _open_block(block, units, bins, unit_hist, accumulate)
            for i in range(inputs):
                row = bits[i]
                if i + 2 < inputs:
                    _prefetch_row(bits[i + 2], start, stop, line)
                lanes = numba.uint64((c * inputs + i) * 4 * bins)
                local = numba.uint64(offset - start)  # position of unit 0 in bin 0
                for u in range(start, stop):
                    unit = numba.uint64(u)
                    k = _bin(row[unit] & mask, table, single, shift, bias)
                    unit_hist[local + unit + k * numba.uint64(_UNIT_BLOCK)] += 1
                    # Four lanes break the store-to-load chain on runs of one bin.
                    lane_hist[lanes + (unit & numba.uint64(3)) * lane_stride + k] += 1
            if not accumulate:
                _running_sum(unit_hist, offset, bins)

    @numba.njit(cache=True, nogil=True, parallel=True, boundscheck=False)
    def _bin_table_kernel_sparse(bits, table, single, shift, bias, mask, unit_hist, lane_hist,
                                 line, accumulate):
        # lane_hist is (threads, inputs, 1, bins) here.
        # The same result as _bin_table_kernel, for batches with many exact
        # zeros as ReLU gives: per block row, the zeros are counted with vector
        # instructions and only the other values are binned, found by the set
        # bits of a mask. Both paths in one kernel ran out of registers.
        inputs, units = bits.shape
        blocks = (units + _UNIT_BLOCK - 1) >> _BLOCK_BITS
        bins = unit_hist.shape[0] // (blocks * _UNIT_BLOCK)
        for block in numba.prange(blocks):
            c = numba.get_thread_id()
            start, stop, offset = _open_block(block, units, bins, unit_hist, accumulate)
            local = numba.uint64(offset - start)  # position of unit 0 in bin 0
            for i in range(inputs):
                row = bits[i]
                if i + 2 < inputs:
                    _prefetch_row(bits[i + 2], start, stop, line)
                lanes = numba.uint64((c * inputs + i) * bins)
                zeros = 0
                for u in range(start, stop):
                    unit = numba.uint64(u)
                    zero = (row[unit] & mask) == 0
                    unit_hist[local + unit] += zero
                    zeros += zero
                lane_hist[lanes] += zeros
                for word in range(start, stop, 64):
                    first = numba.uint64(word)
                    nonzero = numba.uint64(0)
                    for j in range(min(64, stop - word)):
                        bit = numba.uint64(j)
                        nonzero |= numba.uint64((row[first + bit] & mask) != 0) << bit
                    while nonzero != 0:
                        unit = first + numba.uint64(trailing_zeros(nonzero))
                        nonzero &= nonzero - numba.uint64(1)
                        k = _bin(row[unit] & mask, table, single, shift, bias)
                        unit_hist[local + unit + k * numba.uint64(_UNIT_BLOCK)] += 1
                        # Without the zeros, runs of one bin are rare enough for one lane.
                        lane_hist[lanes + k] += 1
            if not accumulate:
                _running_sum(unit_hist, offset, bins)

    @numba.njit(cache=True, nogil=True, parallel=True, boundscheck=False)
    def _bin_search_kernel(x, thresholds, unit_hist, lane_hist):
        inputs, units = x.shape
        count = thresholds.shape[0]
        blocks = unit_hist.shape[0]
        chunks = lane_hist.shape[0]
        per_chunk = (blocks + chunks - 1) // chunks
        for c in numba.prange(chunks):
            for block in range(c * per_chunk, min(blocks, (c + 1) * per_chunk)):
                start = block * _UNIT_BLOCK
                stop = min(units, start + _UNIT_BLOCK)
                for i in range(inputs):
                    row = x[i]
                    for u in range(start, stop):
                        a = abs(row[u])
                        if not (a < np.inf):
                            k = count + 1
                        else:
                            lo = 0
                            hi = count
                            while lo < hi:
                                mid = (lo + hi) >> 1
                                if thresholds[mid] < a:
                                    lo = mid + 1
                                else:
                                    hi = mid
                            k = lo
                        unit_hist[block, k, u - start] += 1
                        lane_hist[c, i, u & 3, k] += 1
                for k in range(1, count + 2):
                    for u in range(_UNIT_BLOCK):
                        unit_hist[block, k, u] += unit_hist[block, k - 1, u]

    def bin_numba(x: np.ndarray, thresholds: np.ndarray, scratch: dict | None = None,
                  bin_counts: np.ndarray | None = None):
        """Bin ``x`` with the compiled kernels, in parallel over blocks of units."""
        inputs, units = x.shape
        bins = len(thresholds) + 2
        blocks = -(-units // _UNIT_BLOCK)
        chunks = max(1, min(blocks, numba.get_num_threads()))
        hist_type = np.uint16 if inputs <= _SUB_BATCH else np.uint32
        scratch = {} if scratch is None else scratch
        threads = numba.get_num_threads()
        tables = bucket_tables(thresholds)
        octaves = octave_tables(thresholds)
        kernel = _choose_kernel(x, tables is not None, octaves is not None)
        # The sparse kernel needs one lane, the others four.
        lanes = 1 if kernel == "sparse" else 4
        lane_hist = reusable_buffer(scratch, "lane_hist", (threads, inputs, lanes, bins), np.int32)
        # _sum_lanes leaves the lanes it read zeroed for the next batch.
        if scratch.get("lanes_zeroed") is not lane_hist.base:
            lane_hist[:] = 0
        scratch["lanes_zeroed"] = None
        accumulate = bin_counts is not None and tables is not None
        if accumulate:
            unit_hist = bin_counts
        else:
            unit_hist = reusable_buffer(scratch, "unit_hist", (blocks, bins, _UNIT_BLOCK), hist_type)
        if kernel == "search":
            unit_hist[:] = 0
            with _PARALLEL_LAUNCH:
                _bin_search_kernel(x, thresholds, unit_hist, lane_hist[:chunks])
        else:
            table, single, shift, bias = tables
            uint, _, mask = _layout(x.dtype)
            args = (x.view(uint), table, single, shift, bias, mask)
            counters = (unit_hist.reshape(-1), lane_hist.reshape(-1), _CACHE_LINE // x.itemsize,
                        accumulate)
            if kernel in ("vector", "vector_sparse"):
                row_bins = reusable_buffer(scratch, "row_bins", (threads, _UNIT_BLOCK), np.uint8)
                entries = reusable_buffer(scratch, "entries", (threads, _UNIT_BLOCK + 16),
                                          np.uint32)
                # At least four stripes per thread, so that a free thread finds work.
                stripe_blocks = max(1, min(_STRIPE_BLOCKS, blocks // (4 * threads)))
            # One block at a time to whichever thread is free, so that a core
            # slowed by other work does not hold the batch back.
            with _PARALLEL_LAUNCH:
                previous = numba.set_parallel_chunksize(1)
                try:
                    if kernel in ("vector", "vector_sparse"):
                        try:
                            _bin_vector_kernel(*args, *octaves, *counters, row_bins,
                                               kernel == "vector_sparse", entries, stripe_blocks)
                        except (NumbaError, RuntimeError) as error:
                            # Compiling failed, so nothing was counted: use the portable kernel.
                            _stop_vector_kernel(error)
                            kernel = "dense"
                    if kernel == "sparse":
                        _bin_table_kernel_sparse(*args, *counters)
                    elif kernel == "dense":
                        _bin_table_kernel(*args, *counters)
                finally:
                    numba.set_parallel_chunksize(previous)
        input_cumulative = reusable_buffer(scratch, "input_cumulative", (inputs, bins), np.int64)
        _sum_lanes(lane_hist, input_cumulative)
        scratch["lanes_zeroed"] = lane_hist.base
        return (None if accumulate else unit_hist), input_cumulative

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _sum_lanes(lane_hist, out):
        # out[i, k]: inputs' counts in bin k or below, over threads and lanes.
        # The lanes are zeroed on the way, ready for the next batch.
        chunks, inputs, lanes, bins = lane_hist.shape
        for i in range(inputs):
            row = out[i]
            row[:] = 0
            for c in range(chunks):
                for lane in range(lanes):
                    row += lane_hist[c, i, lane]
                    lane_hist[c, i, lane] = 0
            for k in range(1, bins):
                row[k] += row[k - 1]

else:  # pragma: no cover
    bin_numba = None


#: Share of exact zeros from which the sparse kernel is faster than the
#: bucket kernel: measured break-even about 0.37 on float32 ReLU responses,
#: with a margin.
_SPARSE_FROM = 0.45
#: The same for the AVX-512 kernel's packed mode: measured break-even
#: between 0.3 and 0.4.
_PACKED_FROM = 0.4


def _choose_kernel(x: np.ndarray, has_tables: bool, has_octaves: bool) -> str:
    """Pick ``"search"``, ``"sparse"``, ``"dense"``, ``"vector"`` or ``"vector_sparse"``.

    The share of exact zeros is estimated from two rows of the batch.
    """
    if not has_tables:
        return "search"
    vector = has_octaves and vector_kernel_available()
    sample = x[:: max(1, x.shape[0] // 2)][:2]
    zeros = np.count_nonzero(sample == 0)
    if vector:
        return "vector_sparse" if zeros >= _PACKED_FROM * sample.size else "vector"
    return "sparse" if zeros >= _SPARSE_FROM * sample.size else "dense"


def reusable_buffer(scratch: dict, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Return ``scratch[key]`` reshaped to ``shape``, allocating it when too small."""
    size = math.prod(shape)
    buffer = scratch.get(key)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        scratch[key] = buffer
    return buffer[:size].reshape(shape)


_warned_fallback = False


#: Values of the IUA_WIDGETS_KERNEL environment variable: "" for the fastest
#: kernels, "scalar" for the compiled ones without AVX-512, "numpy" for numpy only.
KERNEL_SETTINGS = ("", "scalar", "numpy")
_warned_settings: set[str] = set()


def _kernel_setting() -> str:
    """Return IUA_WIDGETS_KERNEL, warning once per invalid value."""
    setting = os.environ.get("IUA_WIDGETS_KERNEL", "")
    if setting in KERNEL_SETTINGS:
        return setting
    if setting not in _warned_settings:
        _warned_settings.add(setting)
        warnings.warn(
            f"IUA_WIDGETS_KERNEL={setting!r} is invalid, so iua_widgets uses its fastest "
            "kernels. Valid values: 'scalar' (compiled kernels without AVX-512) and "
            "'numpy' (numpy only). Unset it for the default.",
            RuntimeWarning,
            stacklevel=3,
        )
    return ""


def vector_kernel_available() -> bool:
    """Return whether float32 batches on grids like the default one go to the AVX-512 kernel."""
    return use_compiled() and _AVX512 and _kernel_setting() != "scalar"


def use_compiled() -> bool:
    """Return whether the numba kernels are used (numba importable, not disabled by the environment)."""
    return bin_numba is not None and _kernel_setting() != "numpy"


def bin_values(x: np.ndarray, thresholds: np.ndarray, scratch: dict | None = None,
               bin_counts: np.ndarray | None = None):
    """Bin ``x`` with the fastest available kernel (see the module docstring).

    ``bin_counts`` (from ``new_bin_counts``, uint16 counts per bin) may receive
    the unit counts instead: then, if ``can_add_to_bins`` is true, the
    compiled kernels add the batch's counts per bin to it and
    ``unit_cumulative`` is returned as ``None``. The caller keeps every count
    in it below 2**16.
    """
    global _warned_fallback
    if x.shape[1] == 0:  # a layer without units: every input has 0 inactive units
        bins = len(thresholds) + 2
        input_cumulative = np.zeros((x.shape[0], bins), dtype=np.int64)
        return np.zeros((0, bins, _UNIT_BLOCK), dtype=np.uint32), input_cumulative
    if use_compiled():
        # The kernels read the bits in native byte order.
        x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        if x.shape[0] <= _SUB_BATCH:
            return bin_numba(x, thresholds, scratch, bin_counts)
        parts = [bin_numba(x[s : s + _SUB_BATCH], thresholds)
                 for s in range(0, x.shape[0], _SUB_BATCH)]
        unit_hist = sum(p[0].astype(np.uint32) for p in parts)
        return unit_hist, np.concatenate([p[1] for p in parts])
    if bin_numba is None and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "numba is not importable, so iua_widgets bins responses with its "
            "slower numpy kernel (same results). Install numba for full speed.",
            RuntimeWarning,
            stacklevel=3,
        )
    return bin_numpy(x, thresholds)


def can_add_to_bins(x: np.ndarray, thresholds: np.ndarray) -> bool:
    """Return whether ``bin_values`` would add ``x``'s counts to ``bin_counts``."""
    if x.shape[0] > _SUB_BATCH or x.shape[1] == 0:
        return False
    return use_compiled() and bucket_tables(thresholds) is not None


def new_bin_counts(bins: int, units: int) -> np.ndarray:
    """Return zeroed uint16 counts per bin, in blocks of units (``bin_values``'s layout)."""
    return np.zeros((-(-units // _UNIT_BLOCK), bins, _UNIT_BLOCK), dtype=np.uint16)


def count_moments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the int64 column sums of ``counts`` and of its squares (callers rule out overflow)."""
    if use_compiled():
        return _count_moments(counts)
    return counts.sum(axis=0), (counts * counts).sum(axis=0)


def bin_prefix(low: np.ndarray, high: np.ndarray | None, index: int, carry_bits: int) -> np.ndarray:
    """Return each unit's count in bins ``0`` to ``index`` (grid row ``index``), int64.

    The counts per bin are ``(high << carry_bits) + low`` in the blocked
    layout, and ``high`` may be ``None`` for zero. The result is in unit
    order, padded to whole blocks.
    """
    if use_compiled():
        with _PARALLEL_LAUNCH:
            if high is None:
                return _bin_prefix(low, low, index, carry_bits, False)
            return _bin_prefix(low, high, index, carry_bits, True)
    total = low[:, : index + 1].astype(np.int64).sum(axis=1)
    if high is not None:
        total += high[:, : index + 1].astype(np.int64).sum(axis=1) << carry_bits
    return total.reshape(-1)


if numba is not None:

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _count_moments(counts):
        inputs, columns = counts.shape
        sums = np.zeros(columns, dtype=np.int64)
        squares = np.zeros(columns, dtype=np.int64)
        for i in range(inputs):
            for j in range(columns):
                value = counts[i, j]
                sums[j] += value
                squares[j] += value * value
        return sums, squares

    @numba.njit(cache=True, nogil=True, parallel=True, boundscheck=False)
    def _bin_prefix(low, high, index, carry_bits, with_high):
        blocks, _, width = low.shape
        out = np.zeros(blocks * width, dtype=np.int64)
        for block in numba.prange(blocks):
            row = out[block * width : (block + 1) * width]
            for j in range(index + 1):
                for u in range(width):
                    row[u] += low[block, j, u]
            if with_high:
                for j in range(index + 1):
                    for u in range(width):
                        row[u] += numba.int64(high[block, j, u]) << carry_bits
        return out

