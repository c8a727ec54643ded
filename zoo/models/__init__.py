"""Model families of the zoo; importing this package registers every model."""

from . import cnn, gcnn, hnet, resnet, scale, so2, steerable, unet  # noqa: F401
