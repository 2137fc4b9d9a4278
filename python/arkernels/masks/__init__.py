"""arkernels.masks: block-sparse attention masks described by a few numbers, tiled on request.

    m = masks.block_causal([0, 1, 5, 14, 30, 55, 91, 155, 255, 424, 680])   # VAR scales
    lay = m.layout(128, 128)          # TileLayout: runs, transposed runs, level rule, bitmaps
    lay.validate(); lay.to_dense()    # checks / reference decoding

See docs/masks.md for the exact predicate of every builder and layout.py for the tile layout.
"""
from arkernels.masks.builders import (block_causal, causal, document, equal_blocks, from_level_rule, full, skip_causal,
                                      sliding_window, tree)
from arkernels.masks.combine import and_, or_
from arkernels.masks.dense import from_dense
from arkernels.masks.flex import from_flex_block_mask, to_flex_block_mask
from arkernels.masks.layout import BITS, FULL, RULE, LevelRule, TileLayout
from arkernels.masks.mask import Mask

__all__ = ["Mask", "TileLayout", "LevelRule", "FULL", "RULE", "BITS", "causal", "full", "sliding_window", "block_causal",
           "equal_blocks", "skip_causal", "from_level_rule", "document", "tree", "from_dense", "and_", "or_", "to_flex_block_mask",
           "from_flex_block_mask"]
