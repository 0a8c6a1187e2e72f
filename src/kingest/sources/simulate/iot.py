"""Simulated IoT sensor readings: a fleet of devices, each reporting one measured quantity.

This module's one job is the seed's IoT source. The seed calls
``IoTDataGenerator.generate_sensor_reading(device_id, device_type, location)`` without defining
it; :meth:`IoTSimulator.generate_sensor_reading` is that method. Each device's value follows a
bounded random walk from a plausible starting point, so consecutive readings of one device look
like a real sensor's rather than like noise.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = ["DEVICE_TYPES", "DeviceType", "IoTSimulator"]

DEFAULT_START: Final = datetime(2024, 5, 26, 10, 30, 45, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeviceType:
    """What one kind of sensor measures and within which limits.

    Attributes:
        unit: unit of the value.
        minimum: lowest value the sensor reports.
        maximum: highest value the sensor reports.
        typical: range a device's first reading is drawn from (indoors, normal conditions).
        step: standard deviation of the change between two readings.
        decimals: digits after the point.
    """

    unit: str
    minimum: float
    maximum: float
    typical: tuple[float, float]
    step: float
    decimals: int


DEVICE_TYPES: Final[dict[str, DeviceType]] = {
    "temperature": DeviceType("°C", -40.0, 85.0, (18.0, 26.0), 0.15, 2),
    "humidity": DeviceType("%RH", 0.0, 100.0, (30.0, 60.0), 0.5, 1),
    "pressure": DeviceType("hPa", 870.0, 1085.0, (995.0, 1030.0), 0.2, 1),
    "co2": DeviceType("ppm", 350.0, 5000.0, (420.0, 900.0), 12.0, 0),
    "light": DeviceType("lux", 0.0, 100_000.0, (150.0, 700.0), 25.0, 0),
}
# Temperature first and most common: the seed's devices are all temperature sensors.
_TYPE_WEIGHTS: Final = {"temperature": 40, "humidity": 25, "pressure": 10, "co2": 15, "light": 10}


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


class IoTSimulator:
    """Readings of a simulated fleet of sensors in a few buildings.

    Devices are named ``sensor_001``, ``sensor_002``, ... (the seed's naming) and placed at
    ``building_<a-d>_floor_<1-5>``. The output is a function of ``seed`` (and ``start``) alone
    unless ``clock`` is given.

    Args:
        seed: seed of the random generator; None seeds from the system.
        devices: size of the fleet.
        start: time of the first reading (default: 26 May 2024 10:30:45 UTC).
        clock: when given, each reading's time is ``clock()`` instead of the simulated time.
        readings_per_s: mean rate of readings of the whole fleet in simulated time.

    Attributes:
        fleet: the devices as (device_id, device_type, location).
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        devices: int = 200,
        start: datetime | None = None,
        clock: Callable[[], datetime] | None = None,
        readings_per_s: float = 50.0,
    ) -> None:
        if devices < 1:
            raise ValueError(f"devices must be at least 1, not {devices}")
        if not readings_per_s > 0:
            raise ValueError(f"readings_per_s must be positive, not {readings_per_s}")
        self._rng = random.Random(seed)
        self._now = start or DEFAULT_START
        self._clock = clock
        self._mean_gap_s = 1.0 / readings_per_s
        self._last: dict[str, float] = {}
        names = list(_TYPE_WEIGHTS)
        weights = list(_TYPE_WEIGHTS.values())
        self.fleet: list[tuple[str, str, str]] = [
            (
                f"sensor_{number:03d}",
                self._rng.choices(names, weights)[0],
                f"building_{self._rng.choice('abcd')}_floor_{self._rng.randint(1, 5)}",
            )
            for number in range(1, devices + 1)
        ]

    def generate_sensor_reading(
        self, device_id: str, device_type: str, location: str
    ) -> dict[str, Any]:
        """One reading of a device: the seed's ``IoTDataGenerator.generate_sensor_reading``.

        The device need not be in :attr:`fleet`; a device seen for the first time starts in
        its type's typical range, and later readings move from its last value.

        Args:
            device_id: the device's identifier (the record's partition key).
            device_type: one of :data:`DEVICE_TYPES`.
            location: where the device is.

        Returns:
            ``device_id``, ``device_type``, ``value`` (float within the type's limits),
            ``unit``, ``location`` and ``timestamp`` (ISO 8601, UTC).

        Raises:
            ValueError: unknown device type.
        """
        kind = DEVICE_TYPES.get(device_type)
        if kind is None:
            raise ValueError(
                f"unknown device type {device_type!r}; known: {', '.join(DEVICE_TYPES)}"
            )
        rng = self._rng
        self._now += timedelta(seconds=rng.expovariate(1.0 / self._mean_gap_s))
        moment = self._clock() if self._clock is not None else self._now
        # Keyed by type too: a device id reused with another type must not inherit its value.
        state_key = f"{device_type}\0{device_id}"
        previous = self._last.get(state_key)
        if previous is None:
            value = rng.uniform(*kind.typical)
        else:
            value = min(kind.maximum, max(kind.minimum, previous + rng.gauss(0.0, kind.step)))
        self._last[state_key] = value
        return {
            "device_id": device_id,
            "device_type": device_type,
            "value": float(round(value, kind.decimals)),
            "unit": kind.unit,
            "location": location,
            "timestamp": _iso_utc(moment),
        }

    def readings(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` readings, each from a device of the fleet chosen at random."""
        choose = self._rng.choice
        return [self.generate_sensor_reading(*choose(self.fleet)) for _ in range(n)]
