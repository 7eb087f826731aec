"""A synthetic multi-institution region: HIS and LIS databases from two vendor schemas."""
