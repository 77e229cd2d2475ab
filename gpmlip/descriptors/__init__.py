"""Per-atom descriptors and their Jacobians (the only package that imports dscribe)."""

from gpmlip.descriptors.environments import Environments
from gpmlip.descriptors.neighbours import NeighbourPairs, find_neighbours
from gpmlip.descriptors.protocol import Descriptor
from gpmlip.descriptors.soap import SOAP, SOAPSettings

__all__ = ["SOAP", "SOAPSettings", "Descriptor", "Environments", "NeighbourPairs",
           "find_neighbours"]
