"""Hash functions: 2-D real descriptors -> compact binary codes (packed uint8, n_bits / 8 bytes per row).

All hashers share :class:`BaseHasher`: ``transform`` returns codes packed with :func:`numpy.packbits`
in big-endian bit order (the layout of faiss binary indexes), ``transform_bits`` the unpacked 0/1 bits.
"""

from selconv.hashing._base import BaseHasher, pack_bits, unpack_bits
from selconv.hashing.itq import ITQHasher
from selconv.hashing.kmh import KMeansHasher
from selconv.hashing.rba import RBAHasher

__all__ = ["BaseHasher", "ITQHasher", "KMeansHasher", "RBAHasher", "pack_bits", "unpack_bits"]
