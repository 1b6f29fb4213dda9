"""The gpiozero pin factory, chosen by configuration."""

PIN_FACTORIES = ("lgpio", "rpigpio", "mock")


def make_pin_factory(name: str) -> object:
    """``lgpio`` (Raspberry Pi 5), ``rpigpio`` (older boards) or ``mock`` (the simulator)."""
    if name == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if name == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    if name == "mock":
        from simulator.locker import make_mock_factory

        return make_mock_factory()
    raise ValueError(f"unknown pin factory {name!r}; use one of {', '.join(PIN_FACTORIES)}")
