"""Per-atom descriptors and their Jacobians (the only package that imports dscribe)."""

from gpmlip.descriptors.environments import Environments
from gpmlip.descriptors.neighbours import PairList, neighbour_list
from gpmlip.descriptors.protocol import Descriptor
from gpmlip.descriptors.registry import descriptor_from_dict
from gpmlip.descriptors.soap import SOAP, SOAPSettings
from gpmlip.descriptors.stacked import Stacked

__all__ = ["SOAP", "SOAPSettings", "Stacked", "descriptor_from_dict", "Descriptor", "Environments",
           "PairList", "neighbour_list"]
