"""dense.segdata.names: the bundled class lists against facts taken independently from the datasets' own files and
preparation scripts (typed here from those sources, not derived from dense)."""

from __future__ import annotations

from dense.segdata import (
    ADE20K_CLASSES,
    ADE847_CLASSES,
    COCO_STUFF_CLASSES,
    COCO_STUFF_UNUSED,
    CONTEXT59_CLASSES,
    CONTEXT459_CLASSES,
    VOC_CLASSES,
)

# mmsegmentation tools/dataset_converters/pascal_context.py: the 459-class ids of background + the 59 classes, in the
# order the script lists them; the script sorts them, so label k is the k-th smallest id
MMSEG_CONTEXT_IDS = [0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420,
                     454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34,
                     207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]


def test_context59_is_the_converters_sorted_459_ids():
    """Label k of mmsegmentation's converter is 459-class id sorted(ids)[k]: looking those ids up in the official
    459 list gives the 59 names, in alphabetical order (v0.2 held the VOC-first order: 54 names on wrong labels)."""
    ids = sorted(MMSEG_CONTEXT_IDS)[1:]
    assert [CONTEXT459_CLASSES[i - 1] for i in ids] == list(CONTEXT59_CLASSES)
    assert list(CONTEXT59_CLASSES) == sorted(CONTEXT59_CLASSES)
    assert CONTEXT59_CLASSES[:6] == ("aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle")
    assert CONTEXT59_CLASSES[46] == "sky" and CONTEXT59_CLASSES[41] == "rock" and CONTEXT59_CLASSES[49] == "table"


def test_context459_is_the_official_sorted_list():
    """The official ids follow the sorted names; a few ids the 59-class converter fixes (aeroplane 2, bag 9, wood
    458), and names known from the official file."""
    assert len(CONTEXT459_CLASSES) == len(set(CONTEXT459_CLASSES)) == 459
    assert list(CONTEXT459_CLASSES) == sorted(CONTEXT459_CLASSES)
    assert CONTEXT459_CLASSES[0] == "accordion" and CONTEXT459_CLASSES[2 - 1] == "aeroplane"
    assert CONTEXT459_CLASSES[9 - 1] == "bag" and CONTEXT459_CLASSES[458 - 1] == "wood"
    assert CONTEXT459_CLASSES[-1] == "wool"


def test_voc_devkit_order():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[15] == "person" and VOC_CLASSES[11] == "diningtable" and VOC_CLASSES[20] == "tvmonitor"
    # the 20 VOC objects are Context classes too (Context's 'table' is VOC's 'diningtable')
    objects = {"table" if n == "diningtable" else n for n in VOC_CLASSES[1:]}
    assert objects <= set(CONTEXT59_CLASSES)


def test_coco_stuff_171_in_coco_id_order():
    """182 ids minus the 11 COCO never used; label k is the k-th used id (stored as id - 1 in stuffthingmaps)."""
    never_used = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]  # COCO 2017: 80 thing ids of 1..90
    assert COCO_STUFF_UNUSED == tuple(i - 1 for i in never_used)
    used = [i for i in range(1, 183) if i not in never_used]
    assert len(used) == len(COCO_STUFF_CLASSES) == len(set(COCO_STUFF_CLASSES)) == 171
    name_of_id = dict(zip(used, COCO_STUFF_CLASSES, strict=True))
    # COCO's instances categories and cocostuff's labels.txt (id: name)
    for i, name in {1: "person", 13: "stop sign", 90: "toothbrush", 92: "banner", 105: "clothes", 157: "sky-other",
                    182: "wood"}.items():
        assert name_of_id[i] == name
    assert COCO_STUFF_CLASSES.index("banner") == 80  # the first stuff class follows the 80 things


def test_ade150_objectinfo_order():
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    # objectInfo150.csv (Idx: first name): 1 wall, 13 person, 45 chest of drawers, 150 flag
    for idx, name in {1: "wall", 2: "building", 3: "sky", 13: "person", 45: "chest of drawers", 150: "flag"}.items():
        assert ADE20K_CLASSES[idx - 1] == name


def test_ade847_trainid_order_of_maskformers_script():
    assert len(ADE847_CLASSES) == len(set(ADE847_CLASSES)) == 847
    # prepare_ade20k_full_sem_seg.py: {"name": ..., "id": ADE id, "trainId": k}
    for k, name in {0: "wall", 1: "building, edifice", 11: "person, individual, someone, somebody, mortal, soul",
                    72: "stove, kitchen stove, range, kitchen range, cooking stove",
                    846: "adding machine, totalizer, totaliser"}.items():
        assert ADE847_CLASSES[k] == name
