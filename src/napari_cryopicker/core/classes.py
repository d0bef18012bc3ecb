"""The class table: name, colour and particle diameter (voxels) of each particle class."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Distinct, colour-blind-friendly-ish colours (Okabe-Ito first, then Tableau).
PALETTE = [
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#FFFFFF", "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B",
]


@dataclass
class ParticleClass:
    name: str
    diameter: float  # voxels
    colour: str = ""

    def __post_init__(self) -> None:
        self.name = str(self.name).strip()
        if not self.name:
            raise ValueError("a particle class needs a name")
        if "," in self.name or "=" in self.name:
            raise ValueError(f"class name {self.name!r} may not contain ',' or '='")
        self.diameter = float(self.diameter)
        if not self.diameter > 0:
            raise ValueError(f"class {self.name!r}: diameter must be > 0 voxels, got {self.diameter}")

    @property
    def radius(self) -> float:
        return self.diameter / 2.0


@dataclass
class ClassTable:
    classes: list[ParticleClass] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class names in {names}")
        for i, c in enumerate(self.classes):
            if not c.colour:
                c.colour = PALETTE[i % len(PALETTE)]

    # A class table is also used as "label index -> class": label k is classes[k - 1].
    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self):
        return iter(self.classes)

    def __getitem__(self, name: str) -> ParticleClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"unknown class {name!r}; known classes: {', '.join(self.names) or 'none'}")

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def diameters(self) -> list[float]:
        return [c.diameter for c in self.classes]

    def label_of(self, name: str) -> int:
        """1-based label index of a class (0 is background)."""
        for i, c in enumerate(self.classes):
            if c.name == name:
                return i + 1
        raise KeyError(f"unknown class {name!r}; known classes: {', '.join(self.names) or 'none'}")

    def add(self, name: str, diameter: float, colour: str = "") -> ParticleClass:
        if name in self:
            raise ValueError(f"class {name!r} already exists")
        c = ParticleClass(name, diameter, colour or PALETTE[len(self.classes) % len(PALETTE)])
        self.classes.append(c)
        return c

    def to_dict(self) -> list[dict]:
        return [{"name": c.name, "diameter": c.diameter, "colour": c.colour} for c in self.classes]

    @classmethod
    def from_dict(cls, items: Iterable[dict]) -> ClassTable:
        return cls([ParticleClass(d["name"], d["diameter"], d.get("colour", "")) for d in items])

    @classmethod
    def parse(cls, specs: Sequence[str]) -> ClassTable:
        """Parse CLI ``NAME=DIAMETER`` specs (diameter in voxels)."""
        out = []
        for s in specs:
            if "=" not in s:
                raise ValueError(f"--class {s!r}: expected NAME=DIAMETER_VOXELS, e.g. ribosome=25")
            name, _, d = s.partition("=")
            try:
                diameter = float(d)
            except ValueError:
                raise ValueError(f"--class {s!r}: diameter {d!r} is not a number") from None
            out.append(ParticleClass(name, diameter))
        return cls(out)
