"""Model files that vqcodec releases shipped and later releases replaced. vqcodec's own index
(``vqcodec/models/index.json``) names each by its identifier and finds its file here, so a
``.vqc`` file any release wrote decodes once this package is installed."""
