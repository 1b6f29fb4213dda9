"""Compartment and parcel size classes shared by vouchers, lockers and the gateway."""

from enum import IntEnum


class SizeClass(IntEnum):
    """A parcel's size class; a parcel fits a compartment of its class or larger."""

    S = 0
    M = 1
    L = 2
    XL = 3

    def fits_in(self, compartment: "SizeClass") -> bool:
        """True when a parcel of this class fits a compartment of class ``compartment``."""
        return compartment >= self
