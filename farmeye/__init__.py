"""FarmEye: early disease detection for poultry farms from photos of droppings."""

__version__ = "0.1.0"
