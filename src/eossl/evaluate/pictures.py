"""Pictures of what a pretext task learned that a table cannot show (the colorization's
predicted colours, the dense U-Net's pixel embeddings), drawn by the method itself from its
checkpoint (``PretextMethod.picture``) on the evaluation's data: test-area patches or the
scene."""

from __future__ import annotations

from collections.abc import Mapping

from ..checkpoint import draws_picture, load_method
from ..errors import ConfigError
from .base import Context, Evaluation, figure_record, register_evaluation


@register_evaluation("pictures", position=100)
class Pictures(Evaluation):
    title = "Pictures of the pretext tasks"
    settings = dict(patches=4, map_side=768)
    tables = ()
    twins = False
    description = ("Drawn from the first seed's checkpoint: colorization, {patches} test-area "
                   "patches (true RGB | true L + predicted a,b | a,b error); dense, the first "
                   "three principal components of the U-Net's pixel embeddings of the central "
                   "{map_side} px of the scene, beside true colour and the OSM map.")

    def applies(self, encoder) -> str | None:
        path = encoder.metadata.get("checkpoint")
        if not path or not draws_picture(encoder.metadata):
            return "no picture for this method (only colorization and dense draw one)"
        return None

    def run(self, ctx: Context, encoders: Mapping, seed: int) -> list[dict]:
        if ctx.root is None:
            raise ConfigError("pictures need an output folder (--out) to be written into")
        if seed != ctx.options.get("first_seed", seed):
            return []
        out = []
        test_area = ctx.area_folds()[0].test  # fold 0's test area, one mask per scene
        for name, enc in encoders.items():
            method = load_method(enc.metadata["checkpoint"])
            path = ctx.figure_path(f"{enc.metadata['method']}-{name}.png".replace("/", "-"))
            caption = method.picture(ctx.source, path, seed=seed, patches=self.patches,
                                     area=test_area, max_side=self.map_side)
            if caption:
                out.append(figure_record(ctx, self.name, name, seed, path,
                                         f"{name}: {caption} (seed {seed})"))
        return out
