"""LatLonCover's land-cover mix around a point, from a local USDA Cropland Data Layer GeoTIFF (docs/landcover.md).

`crosswalk` (CDL code → eight coarse classes, the output columns), `cover` (boxes on one open raster),
`points` (many points on every core), `tables` (CSV/Parquet in and out; index records' metadata).
"""
