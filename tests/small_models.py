"""Small model configurations that several test modules build (a helper module: test modules never import each
other)."""

# A QuartzNet of three blocks, each kind of block once: separable or not, residual or not, strided, dilated.
QUARTZNET_SMALL = dict(
    block_channels=[32, 32, 48],
    block_repeats=[1, 2, 1],
    block_kernel_sizes=[11, 9, 1],
    block_strides=[4, 1, 1],
    block_dilations=[1, 2, 1],
    block_residual=[False, True, False],
    block_separable=[True, True, False],
)
