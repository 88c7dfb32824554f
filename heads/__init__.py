"""heads: small regression heads trained on vectors from an embedcache cache (see the heads issue)."""
