"""The loaders behind :func:`equiaudit.data.load_data`, one module per kind of source.

Use :mod:`equiaudit.data`; these modules are internal. Every loader returns a
:class:`~equiaudit.datasets.core.Source` whose dataset yields ``(x, y, mask)`` items: ``x`` a float32
``(C, H, W)`` tensor, ``y`` an int (``-1`` when unlabelled), ``mask`` a float32 ``(1, H, W)`` tensor of
{0, 1} or an empty tensor.
"""
