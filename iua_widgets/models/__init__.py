"""Small models shipped with trained weights, for examples and tests.

``iua_widgets.models.digits`` needs PyTorch and scikit-learn.
"""
