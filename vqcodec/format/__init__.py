"""The ``.vqc`` file format (specified in ``docs/format.md``)."""
