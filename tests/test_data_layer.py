"""Feature stores, manifests and the caption dataset: validation and collation."""
import os

import numpy as np
import pytest
import torch

from conftest import write_h5, write_tsv
from fairseq_nar_caption.data.caption_dataset import CaptionDataset
from fairseq_nar_caption.data.feature_store import (MultiModalFeatures, format_key, open_feature_store)
from fairseq_nar_caption.data.manifest import CaptionRow, read_manifest, write_manifest
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.tasks.captioning import CaptioningTask


def make_dataset(data, split="train", per="caption", files=("features.h5",), template="{}", **kw):
    d = CaptioningTask.load_dictionary(os.path.join(data, "dict.txt"))
    feats = MultiModalFeatures([open_feature_store(os.path.join(data, f), template) for f in files])
    path = os.path.join(data, f"{split}.tsv")
    return CaptionDataset(read_manifest(path), path, feats, d, per=per, **kw)


def test_key_templates():
    assert format_key("{}", "12") == "12"
    assert format_key("%d_features", "12") == "12_features"
    assert format_key("%d_grids", "007") == "7_grids"
    assert format_key("video%s", "3") == "video3"
    with pytest.raises(DataError, match="integer ids.*'video3'"):
        format_key("%d_grids", "video3")


def test_hdf5_template_and_npy_folder_give_same_features(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_h5(tmp_path / "f.h5", {"5_grids": a})
    os.makedirs(tmp_path / "npy")
    np.save(tmp_path / "npy" / "5.npy", a)
    h = open_feature_store(str(tmp_path / "f.h5"), "%d_grids")
    n = open_feature_store(str(tmp_path / "npy"))
    np.testing.assert_array_equal(h.get("5"), n.get("5"))
    assert h.peek_shape() == n.peek_shape() == (3, 4)


def test_missing_item_names_file_and_item(tiny_data):
    write_tsv(tiny_data / "train.tsv", [("1", "a red circle"), ("9", "a blue square")])
    with pytest.raises(DataError, match=r"features\.h5: item 9: no features under key '9'"):
        make_dataset(tiny_data)


def test_wrong_feature_dim_names_item(tiny_data):
    write_h5(tiny_data / "features.h5", {"1": np.zeros((4, 6), "f"), "2": np.zeros((4, 5), "f"),
                                         "3": np.zeros((4, 6), "f")})
    with pytest.raises(DataError, match="item 2: feature dim 5, other items have 6"):
        make_dataset(tiny_data)


def test_too_many_feature_vectors(tiny_data):
    with pytest.raises(DataError, match="item 1: 4 feature vectors, more than the 3"):
        make_dataset(tiny_data, max_source_positions=3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_stops_at_load_time(tiny_data, bad):
    x = np.ones((4, 6), "f")
    x[2, 3] = bad
    write_h5(tiny_data / "features.h5", {"1": np.ones((4, 6), "f"), "2": x, "3": np.ones((4, 6), "f")})
    with pytest.raises(DataError, match=r"features\.h5: item 2: 1 NaN/Inf"):
        make_dataset(tiny_data)
    # lazy checking defers the scan but still refuses the item when it is read
    ds = make_dataset(tiny_data, feature_check="lazy")
    with pytest.raises(DataError, match="item 2: 1 NaN/Inf"):
        [ds[i] for i in range(len(ds))]


def test_empty_caption(tiny_data):
    (tiny_data / "train.tsv").write_text("item_id\tcaption\n1\ta red circle\n2\t  \n")
    with pytest.raises(DataError, match=r"train\.tsv:3: item 2: empty caption"):
        make_dataset(tiny_data)


def test_over_long_caption(tiny_data):
    write_tsv(tiny_data / "train.tsv", [("1", "a red circle"), ("2", " ".join(["a"] * 10))])
    with pytest.raises(DataError, match=r"train\.tsv: item 2: caption of 10 words is longer"):
        make_dataset(tiny_data, max_target_positions=10)


def test_word_outside_dictionary(tiny_data):
    write_tsv(tiny_data / "train.tsv", [("1", "a red circle"), ("2", "a green square")])
    with pytest.raises(DataError, match=r"train\.tsv: item 2: word 'green' is not in the dictionary"):
        make_dataset(tiny_data)
    # evaluation references may hold unseen words: <unk> in the loss target, raw text kept for scoring
    write_tsv(tiny_data / "test.tsv", [("2", "a green square")])
    ds = make_dataset(tiny_data, split="test", per="item", strict_vocab=False)
    assert ds[0]["target"].tolist()[1] == ds.dictionary.unk()
    assert ds.refs["2"] == ["a green square"]


def test_manifest_errors(tmp_path):
    (tmp_path / "m.tsv").write_text("id\tcaption\n1\ta\n")
    with pytest.raises(DataError, match="lacks column"):
        read_manifest(str(tmp_path / "m.tsv"))
    (tmp_path / "m.tsv").write_text("item_id\tcaption\tpos\n1\ta red circle\tDT JJ\n")
    with pytest.raises(DataError, match="m.tsv:2: item 1: 2 POS tags for 3 caption words"):
        read_manifest(str(tmp_path / "m.tsv"))


def test_write_manifest_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "out.tsv"
    rows = [CaptionRow("1", "a red circle"), CaptionRow("2", "bad\tcaption")]
    with pytest.raises(DataError, match="item 2"):
        write_manifest(str(out), rows)
    assert not out.exists()


def test_collater_shapes_and_teacher_forcing(tiny_data):
    ds = make_dataset(tiny_data)
    d = ds.dictionary
    batch = ds.collater([ds[i] for i in range(len(ds))])
    ni = batch["net_input"]
    assert set(ni) == {"features", "padding_mask", "prev_output_tokens"}
    assert ni["features"].shape == (4, 4, 6) and ni["features"].dtype == torch.float32
    assert ni["padding_mask"].shape == (4, 4) and ni["padding_mask"].dtype == torch.bool
    assert not ni["padding_mask"].any()
    tgt = batch["target"]
    assert tgt.shape == (4, 4)  # 3 words + </s>
    assert (tgt[:, -1] == d.eos()).all()
    assert (ni["prev_output_tokens"][:, 0] == d.eos()).all()
    assert torch.equal(ni["prev_output_tokens"][:, 1:], tgt[:, :-1])
    assert d.string(tgt[0, :-1]) == "a red circle"
    assert batch["ntokens"] == 16


def test_variable_length_features_are_padded(tiny_data):
    write_h5(tiny_data / "features.h5", {"1": np.ones((2, 6), "f"), "2": np.ones((4, 6), "f"),
                                         "3": np.ones((3, 6), "f")})
    ds = make_dataset(tiny_data)
    batch = ds.collater([ds[0], ds[2]])  # items 1 (2 vectors) and 2 (4 vectors)
    assert batch["net_input"]["features"].shape == (2, 4, 6)
    assert batch["net_input"]["padding_mask"].tolist() == [[False, False, True, True], [False] * 4]
    assert batch["net_input"]["features"][0, 2:].abs().sum() == 0


def test_eval_view_is_one_example_per_item_in_manifest_order(tiny_data):
    ds = make_dataset(tiny_data, split="test", per="item", strict_vocab=False)
    assert len(ds) == 2
    assert [ds[i]["item_id"] for i in range(2)] == ["3", "2"]
    assert ds[0]["references"] == ["a blue circle", "one blue circle"]


def test_two_modalities_concatenate_along_time(tiny_data):
    write_h5(tiny_data / "motion.h5", {str(i): np.full((2, 6), i, "f") for i in (1, 2, 3)})
    ds = make_dataset(tiny_data, files=("features.h5", "motion.h5"))
    assert ds.tokens_per_modality == [4, 2]
    x = ds[0]["features"]
    assert x.shape == (6, 6) and torch.equal(x[4:], torch.ones(2, 6))
    write_h5(tiny_data / "motion5.h5", {str(i): np.ones((2, 5), "f") for i in (1, 2, 3)})
    with pytest.raises(DataError, match="disagree on the feature dim"):
        make_dataset(tiny_data, files=("features.h5", "motion5.h5"))


def test_eval_batches_keep_every_item(tiny_data, tmp_path):
    # fairseq drops a last batch that is not a multiple of --required-batch-size-multiple;
    # the task must not let that happen to evaluation items
    write_h5(tmp_path / "f.h5", {str(i): np.ones((2, 6), "f") for i in range(13)})
    write_tsv(tmp_path / "test.tsv", [(str(i), "a red circle") for i in range(13)])
    (tmp_path / "dict.txt").write_text((tiny_data / "dict.txt").read_text())
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(tmp_path), feature_files="f.h5"))
    task.load_dataset("test")
    itr = task.get_batch_iterator(dataset=task.dataset("test"), max_sentences=4,
                                  required_batch_size_multiple=8).next_epoch_itr(shuffle=False)
    assert sorted(i for b in itr for i in b["id"].tolist()) == list(range(13))


def test_length_target_is_a_distribution_of_the_items_captions(tiny_data):
    write_tsv(tiny_data / "train.tsv", [("1", "a red circle"), ("1", "a red red circle"), ("1", "a red ball"),
                                        ("2", "a blue square"), ("3", "a blue circle")],
              header=("item_id", "caption"))
    ds = make_dataset(tiny_data, max_target_positions=8)
    batch = ds.collater([ds[0], ds[3]])
    lt = batch["length_target"]
    assert lt.shape == (2, 8)
    torch.testing.assert_close(lt.sum(1), torch.ones(2))
    expected = torch.zeros(8)
    expected[3], expected[4] = 2 / 3, 1 / 3  # item 1: two 3-word captions, one 4-word
    torch.testing.assert_close(lt[0], expected)
    assert lt[1].argmax() == 3 and lt[1].max() == 1.0


def test_target_pos_classes_follow_the_manifest_tags(tiny_data):
    write_tsv(tiny_data / "train.tsv", [("1", "a man is driving", "DT NN VBZ VBG"), ("2", "a blue square", "DT JJ NN"),
                                        ("3", "a blue circle", "DT JJ NN")], header=("item_id", "caption", "pos"))
    (tiny_data / "dict.txt").write_text("".join(f"{w} 1\n" for w in "a man is driving blue square circle".split()))
    ds = make_dataset(tiny_data)
    batch = ds.collater([ds[0], ds[1]])
    # OTHER 0, NOUN 1, VERB 2; </s> and padding 0
    assert batch["target_pos"].tolist() == [[0, 1, 2, 2, 0], [0, 0, 1, 0, 0]]
    assert batch["target_pos"].shape == batch["target"].shape


def test_fairseqs_prefetch_thread_is_stopped_before_exit():
    """fairseq's BufferedIterator loads batches ahead in a daemon thread; killed mid-batch at
    interpreter finalisation it hangs a finished run (h5py's lock) or aborts it (torch's C++).
    The exit tidy stops it after its batch in flight, even while it waits on a full queue."""
    import time

    from fairseq.data.iterators import BufferedIterator
    from fairseq_nar_caption.data.feature_store import stop_background_loaders

    loaded = []

    class Source:
        def __len__(self):
            return 1000

        def __iter__(self):
            for i in range(1000):
                loaded.append(i)
                yield i

    batches = BufferedIterator(2, Source())
    assert next(batches) == 0
    deadline = time.time() + 10
    while batches._queue.qsize() < 2 and time.time() < deadline:  # the queue full: the thread waits to put
        time.sleep(0.01)
    thread = batches._consumer
    assert thread.is_alive() and batches._queue.qsize() == 2
    stop_background_loaders(timeout=10)
    assert not thread.is_alive()
    assert len(loaded) <= 4, len(loaded)  # batches 1, 2 queued, at most 3 in flight; not the whole source
