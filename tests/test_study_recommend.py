"""The report's recommendation: chosen on dev among the recipes beyond the baselines, and not
recommended over a baseline it does not beat on dev."""

from tlprune.study.report import Row, StudyData, recommended


def _data(devs: dict[str, list[float]], baselines: list[str]) -> StudyData:
    rows = [
        Row(
            cell=f"{m}_s{s}",
            method=m,
            target="t",
            budget=256,
            sparsity=0.8,
            seed=s,
            dev=d,
            test=0.5,
        )
        for m, ds in devs.items()
        for s, d in enumerate(ds)
    ]
    return StudyData("s", "recipe", baselines, {}, rows, {})


def test_the_best_candidate_on_dev_is_named_and_compared_with_each_baseline():
    data = _data({"base": [0.80, 0.82], "a": [0.78, 0.80], "b": [0.70, 0.72]}, ["base"])
    text = recommended(data)
    assert "**a**, mean dev 79.0 %" in text
    assert "not above the baseline **base** on dev over the 2 cells both ran" in text
    assert "keep base" in text


def test_a_tie_with_a_baseline_keeps_the_baseline_and_a_win_does_not_mention_it():
    assert "keep base" in recommended(_data({"base": [0.8], "a": [0.8]}, ["base"]))
    text = recommended(_data({"base": [0.8, 0.7], "a": [0.9, 0.7]}, ["base"]))
    assert "**a**" in text and "**base**" not in text


def test_only_baselines_or_no_shared_cells():
    assert (
        recommended(_data({"base": [0.8]}, ["base"])) == "No recipe beyond the baselines was run."
    )
    data = _data({"a": [0.8]}, [])
    data.rows.append(Row(cell="b_s5", method="b", target="t", budget=256, sparsity=0.8, seed=5,
                         dev=0.9, test=0.5))  # fmt: skip
    assert "no paired recommendation" in recommended(data)
