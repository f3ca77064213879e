"""A local STAC Item / ItemCollection whose assets are rasters (data/stac.py), written from the
REAL sample scene: one multi-band COG asset with eo:bands, or one asset per band."""

import json

import numpy as np
import pytest

from eossl.data.resolve import DataRequest, open_data
from eossl.errors import BandError, DataError
from userdata import OLI_FROM_S2, landsat_like, write_tif


def _item(item_id, assets, bbox=(13.0, 52.0, 13.2, 52.1)):
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "bbox": list(bbox), "geometry": {"type": "Polygon", "coordinates": [[
                [bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]],
                [bbox[0], bbox[3]], [bbox[0], bbox[1]]]]},
            "properties": {"datetime": "2017-02-16T10:21:01Z"}, "links": [],
            "assets": assets, "stac_extensions": []}


def test_item_with_one_multiband_asset(brandenburg, tmp_path):
    landsat_like(brandenburg, tmp_path / "l8.tif", names=[])
    asset = {"href": "./l8.tif", "type": "image/tiff; application=geotiff; "
             "profile=cloud-optimized", "roles": ["data"],
             "eo:bands": [{"name": n} for n in OLI_FROM_S2]}
    (tmp_path / "item.json").write_text(json.dumps(_item("l8", {"data": asset})))
    src = open_data(DataRequest(data=str(tmp_path / "item.json"), sensor="landsat8"))
    assert src.bands == ["OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7"]
    assert src.scenes[0].path == tmp_path / "l8.tif"  # read in place
    with pytest.raises(BandError, match="ambiguous without a sensor"):
        open_data(DataRequest(data=str(tmp_path / "item.json")))


def test_item_collection_with_one_asset_per_band(brandenburg, tmp_path):
    scene = brandenburg.scenes[0]
    items = []
    for k, (r, c) in enumerate(((0, 0), (300, 600))):
        assets = {}
        for b in ("B04", "B08", "B11"):
            arr = scene.read((r, c, 96, 96), bands=[b]).astype("uint16")
            x0, y0 = scene.transform @ (c, r)
            from rasterio.transform import from_origin

            write_tif(tmp_path / f"t{k}" / f"{b}.tif", arr, crs=scene.crs,
                      transform=from_origin(x0, y0, 10, 10))
            assets[b] = {"href": f"./t{k}/{b}.tif", "type": "image/tiff", "roles": ["data"]}
        assets["thumbnail"] = {"href": "./t.png", "type": "image/png", "roles": ["thumbnail"]}
        items.append(_item(f"tile{k}", assets))
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection",
                                                     "features": items}))
    src = open_data(DataRequest(data=str(tmp_path / "items.json")), cache=tmp_path / "c")
    assert len(src.scenes) == 2 and src.bands == ["B04", "B08", "B11"]
    got = src.scenes[1].read((0, 0, 8, 8))
    want = scene.read((300, 600, 8, 8), bands=["B04", "B08", "B11"])
    assert np.array_equal(got, want)
    assert src.crops(32, 4, seed=0)[0]["image"].shape == (3, 32, 32)
    (tmp_path / "t1" / "B08.tif").unlink()
    with pytest.raises(DataError, match="item 'tile1': asset file .*B08.tif does not exist"):
        open_data(DataRequest(data=str(tmp_path / "items.json")), cache=tmp_path / "c")
