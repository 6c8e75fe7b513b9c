"""The backbone memorization probe (benchmarks/audits/memorization.py): planted models score what they
must, the prompt's own examples cannot score, the file-form titles match the raw file, the cache
answers without generating again, and the real decoding plumbing runs on a tiny random Llama."""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.audits import memorization as mem
from benchmarks.contract import Catalog
from benchmarks.data import canonical

ROOT = Path(__file__).resolve().parent.parent
CONFIG = mem.load_config()
FMT = CONFIG.formats["movielens-100k"]
ARTICLES = CONFIG.normalize_articles
SETTINGS = CONFIG.settings
SHA = {"ml-100k.item": "a" * 64}
INFO = {"id": "planted", "quant": "none", "compute_dtype": "float32", "sha256": "b" * 64, "weights_sha256": "c" * 64}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return canonical.load("movielens-100k").catalog


@pytest.fixture(scope="module")
def file_forms(catalog) -> dict[str, str]:
    """raw id -> the title as u.item writes it (what a perfect memorizer answers)."""
    items = catalog.items
    return {r: mem.file_title(t, y, FMT.articles) for r, t, y in zip(items["raw_id"], items["title"], items["year"])}


def query_id(prompt: str) -> str:
    return prompt.rsplit("\n", 1)[-1].split("|")[0]


def probe(catalog, generate, settings=SETTINGS, fmt=FMT):
    return mem.run_probe(catalog, fmt, generate, settings, ARTICLES)


class FakeBackbone:
    """What probe_backbone needs of a backbone when a planted ``generate`` decodes."""

    def __init__(self, **info):
        self._info = {**INFO, **info}

    def info(self):
        return dict(self._info)


# ------------------------------------------------------------------------------------ planted models


def test_a_perfect_memorizer_scores_one_with_a_tight_interval(catalog, file_forms):
    def memorizer(prompts):
        return [f" {file_forms[query_id(p)]}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|0|1|0\n" for p in prompts]

    result = probe(catalog, memorizer)
    assert result["n_items"] == 500
    for score in ("exact", "normalized"):
        assert result[score]["count"] == 500 and result[score]["rate"] == 1.0
        assert result[score]["ci95"][0] > 0.99 and result[score]["ci95"][1] == 1.0
    assert result["copied"] == 0 and result["empty"] == 0
    assert result["shown"][0]["answer"] == result["shown"][0]["expected"]


def test_a_copier_of_the_examples_never_scores_and_is_counted(catalog):
    def last_example(prompts):  # the line before the query: "<id>|<title>|"
        return [p.split("\n")[-2].split("|")[1] + "|" for p in prompts]

    def first_example_in_other_case(prompts):
        return [p.split("\n")[1].split("|")[1].upper().replace(" (", " ( ") for p in prompts]

    for copier in (last_example, first_example_in_other_case):
        result = probe(catalog, copier)
        assert result["exact"]["count"] == 0 and result["normalized"]["count"] == 0
        assert result["copied"] == result["n_items"] == 500


def test_a_model_that_knows_nothing_scores_zero(catalog):
    for answer in ("Nothing Known (2000)|", "", "\n"):
        result = probe(catalog, lambda prompts, a=answer: [a] * len(prompts))
        assert result["exact"]["count"] == result["normalized"]["count"] == result["copied"] == 0
        assert result["exact"]["ci95"][0] == 0.0 and result["exact"]["ci95"][1] < 0.01
    assert result["empty"] == 500


def test_normalization_forgives_case_article_and_year_but_exact_does_not(catalog, file_forms):
    norm = mem.normalize_title
    assert norm("usual suspects, the", ARTICLES) == norm("The Usual Suspects (1995)", ARTICLES)
    assert mem.normalize_title("Usual Suspects, The (1995)", ARTICLES) == "the usual suspects"
    assert mem.normalize_title("Boot, Das (1981)", ARTICLES) == mem.normalize_title("das boot", ARTICLES)
    assert mem.normalize_title("Mr. Holland's Opus (1995)", ARTICLES) == "mr hollands opus"
    assert mem.normalize_title("Toy Story (1995)", ARTICLES) != mem.normalize_title("Toy Story 2 (1999)", ARTICLES)

    def sloppy(prompts):  # lowercase, no year: "usual suspects, the"
        return [mem._YEAR.sub("", file_forms[query_id(p)]).lower() + "|" for p in prompts]

    result = probe(catalog, sloppy)
    assert result["normalized"]["count"] == 500 and result["exact"]["count"] == 0


# ------------------------------------------------------------------------------------ titles, formats


def test_file_form_of_usual_suspects(catalog, file_forms):
    assert file_forms["12"] == "Usual Suspects, The (1995)"
    assert mem.file_title("The City of Lost Children (Cité des enfants perdus, La)", 1995, FMT.articles) == \
        "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert mem.file_title("L'Enfer", pd.NA, FMT.articles) == "Enfer, L'"
    assert mem.file_title("Die Hard", 1988, FMT.articles) == "Die Hard (1988)"


def test_file_forms_match_the_raw_file_but_for_the_known_few(catalog):
    """The recbole copy of u.item keeps the file's titles (year in a column): 1,676 of 1,682 rebuild."""
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        pytest.skip("recbole is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k" / "ml-100k.item"
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False).iloc[:, :2]
    raw.columns = ["raw_id", "file"]
    merged = catalog.items.merge(raw, on="raw_id")
    misses = sorted(r for r, t, f in zip(merged["raw_id"], merged["title"], merged["file"])
                    if mem.file_title(t, None, FMT.articles) != f)
    assert len(merged) == 1682 and misses == ["1251", "1330", "1358", "1412", "1548", "643"]


def test_other_line_formats_render_and_read_back():
    ml1m, ml25m = CONFIG.formats["movielens-1m"], CONFIG.formats["movielens-25m"]
    assert ml1m.render("1", "Toy Story (1995)", "Animation|Children's|Comedy") == \
        "1::Toy Story (1995)::Animation|Children's|Comedy"
    assert ml1m.answer("Toy Story (1995)::Animation\n2::") == "Toy Story (1995)"
    assert ml1m.complete("Toy Story (1995):") is False and ml1m.complete("Toy Story (1995)::") is True
    assert ml25m.render("11", "American President, The (1995)", "Comedy") == \
        '11,"American President, The (1995)",Comedy'
    assert ml25m.answer('"American President, The (1995)",Comedy|Drama') == "American President, The (1995)"
    assert ml25m.answer("Heat (1995),Action") == "Heat (1995)"
    assert ml25m.complete('"American President, The') is False and ml25m.complete('"American, The (1995)"') is True


def test_shipped_config_names_known_cards_and_rejects_unknown_keys(tmp_path):
    cards = {p.stem for p in (ROOT / "datasets").glob("*.yaml")}
    assert set(CONFIG.formats) <= cards and "movielens-100k" in CONFIG.formats
    bad = tmp_path / "memorization.yaml"
    bad.write_text(mem.CONFIG.read_text().replace("n_items: 500", "n_item: 500"))
    with pytest.raises(ValueError, match="n_item"):
        mem.load_config(bad)
    with pytest.raises(ValueError):
        mem.ProbeSettings(n_items=0)


# ------------------------------------------------------------------------------------ what is probed


def test_probed_items_exclude_the_examples_and_their_neighbours(catalog):
    plan = mem.plan_probe(catalog, FMT, SETTINGS, ARTICLES)
    assert len(plan.examples) == 3 and len(plan.raw_ids) == 500 == len(set(plan.raw_ids))
    assert not set(plan.examples) & set(plan.raw_ids)
    assert all(abs(int(r) - int(e)) > SETTINGS.id_gap for r in plan.raw_ids for e in plan.examples)
    example_norms = {mem.normalize_title(t, ARTICLES) for t in plan.example_titles}
    assert not example_norms & {mem.normalize_title(t, ARTICLES) for t in plan.expected}
    assert "267" not in plan.raw_ids  # "unkonwn"
    assert all(p.startswith(plan.prefix) and p.endswith(f"\n{r}|") for p, r in zip(plan.prompts, plan.raw_ids))
    assert plan.prefix.count("\n") == 4 and all(f"\n{e}|" in plan.prefix for e in plan.examples)
    again = mem.plan_probe(catalog, FMT, SETTINGS, ARTICLES)
    assert again == plan
    other = mem.plan_probe(catalog, FMT, replace(SETTINGS, seed=SETTINGS.seed + 1), ARTICLES)
    assert other.examples != plan.examples


def test_items_sharing_an_example_title_are_not_probed():
    n = 60
    items = pd.DataFrame({"item": range(n), "raw_id": [str(10 * i) for i in range(n)],
                          "title": [f"The Film {i % 6}" for i in range(n)], "year": pd.array([2000] * n, dtype="Int64"),
                          "genres": ["Drama"] * n})
    toy = Catalog("toy", items, pd.DataFrame({"user": [0]}), {"item": "movie"})
    settings = replace(SETTINGS, n_items=500)
    plan = mem.plan_probe(toy, FMT, settings, ARTICLES)
    shown = set(plan.example_titles)
    assert plan.raw_ids and len(plan.raw_ids) == n - 10 * len(shown)  # all the catalog, less the 10 of each shown
    assert not shown & set(plan.expected)
    result = probe(toy, lambda prompts: [p.split("\n")[-2].split("|")[1] for p in prompts], settings)
    assert result["copied"] == result["n_items"] and result["normalized"]["count"] == 0


def test_wilson_interval_matches_scipy_and_its_edges():
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 10), (3, 10), (250, 500), (497, 500), (500, 500), (1, 1)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = mem.wilson_interval(k, n)
        assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
    assert mem.wilson_interval(500, 500)[0] > 0.99 and mem.wilson_interval(0, 500)[0] == 0.0
    assert mem.wilson_interval(0, 0) == (0.0, 1.0)


# ------------------------------------------------------------------------------------ cache and entry


def test_cache_returns_the_stored_result_and_recomputes_on_any_hash(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"n_items": 1, "exact": {"count": len(calls)}}

    first = mem.cached_probe(tmp_path, INFO, "movielens-100k", SHA, compute)
    assert len(calls) == 1 and first["cached"] is False
    stored = tmp_path / "memorization" / f"{first['key']}.json"
    assert json.loads(stored.read_text())["keyed_by"]["backbone"]["weights_sha256"] == "c" * 64
    again = mem.cached_probe(tmp_path, INFO, "movielens-100k", SHA, compute)
    assert len(calls) == 1 and again["cached"] is True and again["exact"] == first["exact"]
    for info, sha in (({**INFO, "sha256": "d" * 64}, SHA), ({**INFO, "weights_sha256": "e" * 64}, SHA),
                      ({**INFO, "quant": "nf4"}, SHA), (INFO, {"ml-100k.item": "f" * 64})):
        before = len(calls)
        assert mem.cached_probe(tmp_path, info, "movielens-100k", sha, compute)["cached"] is False
        assert len(calls) == before + 1
    stored.write_text("{not json")
    assert mem.cached_probe(tmp_path, INFO, "movielens-100k", SHA, compute)["cached"] is False
    unhashed = {**INFO, "sha256": None, "weights_sha256": None}
    for _ in range(2):
        assert mem.cached_probe(tmp_path, unhashed, "movielens-100k", SHA, compute)["cached"] is False
    assert len(list((tmp_path / "memorization").glob("*.json"))) == 5


def test_probe_backbone_uses_the_cache_and_skips_unknown_formats(catalog, file_forms, tmp_path):
    calls = []

    def memorizer(prompts):
        calls.append(len(prompts))
        return [file_forms[query_id(p)] + "|" for p in prompts]

    backbone, small = FakeBackbone(), replace(SETTINGS, n_items=50)
    result = mem.probe_backbone(backbone, catalog, "movielens-100k", SHA, tmp_path, settings=small, generate=memorizer)
    assert calls == [50] and result["cached"] is False
    for key in ("dataset", "backbone", "keyed_by", "format", "n_items", "n_examples", "exact", "normalized",
                "copied", "seconds", "shown"):
        assert key in result, key
    assert result["dataset"] == "movielens-100k" and result["backbone"] == "planted" and result["format"] == "u.item"
    assert result["exact"]["rate"] == 1.0 and result["keyed_by"]["dataset_sha256"] == SHA
    again = mem.probe_backbone(backbone, catalog, "movielens-100k", SHA, tmp_path, settings=small, generate=memorizer)
    assert calls == [50] and again["cached"] is True and again["exact"] == result["exact"]
    mem.probe_backbone(backbone, catalog, "movielens-100k", SHA, tmp_path, settings=replace(small, seed=1),
                       generate=memorizer)
    mem.probe_backbone(FakeBackbone(weights_sha256="9" * 64), catalog, "movielens-100k", SHA, tmp_path,
                       settings=small, generate=memorizer)
    assert calls == [50, 50, 50]
    for name in ("amazon-beauty", "steam"):
        assert mem.line_format(name) is None
        assert mem.probe_backbone(backbone, catalog, name, SHA, tmp_path, generate=memorizer) is None
    assert calls == [50, 50, 50]


def test_a_lazy_backbone_is_loaded_only_on_a_cache_miss_and_must_be_the_expected_one(catalog, file_forms, tmp_path):
    loads = []

    def load(**info):
        def loader():
            loads.append(1)
            return FakeBackbone(**info)
        return loader

    memorizer = lambda prompts: [file_forms[query_id(p)] + "|" for p in prompts]  # noqa: E731
    small = replace(SETTINGS, n_items=20)
    run = lambda loader: mem.probe_backbone(loader, catalog, "movielens-100k", SHA, tmp_path,  # noqa: E731
                                            settings=small, generate=memorizer, info=FakeBackbone().info())
    assert run(load())["cached"] is False and len(loads) == 1
    assert run(load())["cached"] is True and len(loads) == 1  # the hit never loads a model
    (tmp_path / "memorization").rename(tmp_path / "emptied")
    with pytest.raises(ValueError, match="not the one expected"):
        run(load(weights_sha256="8" * 64))  # another model behind the same name: refused, not mislabelled


# ------------------------------------------------------------------------------------ real decoding


def test_tiny_llama_runs_the_real_generator(catalog, tmp_path_factory):
    torch = pytest.importorskip("torch")
    from benchmarks.perf.tiny_llama import tiny_backbone_dir
    from methods.backbone import load_backbone

    backbone = load_backbone(str(tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))), quant="none")
    model, tokenizer = backbone.model, backbone.tokenizer
    cache = tmp_path_factory.mktemp("cache")
    small = replace(SETTINGS, n_items=20, batch_size=8, max_new_tokens=6)
    result = mem.probe_backbone(backbone, catalog, "movielens-100k", SHA, cache, settings=small)
    assert result["n_items"] == 20 and result["n_examples"] == 3 and result["cached"] is False
    assert 0 <= result["normalized"]["count"] <= 20 and result["seconds"] > 0
    assert result["keyed_by"]["backbone"]["weights_sha256"] == backbone.info()["weights_sha256"]
    assert mem.probe_backbone(backbone, catalog, "movielens-100k", SHA, cache, settings=small)["cached"] is True

    # the shared-prefix, shrinking-batch decoder writes what transformers' own greedy generate writes; weights
    # scaled up so that the random model's outputs vary with position and rows stop at different steps
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(20)
    plan = mem.plan_probe(catalog, FMT, replace(small, n_items=6), ARTICLES)

    def done(text):
        return len(text) >= 6

    ours = mem.backbone_generator(backbone, batch_size=4, max_new_tokens=8, done=done)(plan.prompts)
    for prompt, text in zip(plan.prompts, ours):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                 pad_token_id=tokenizer.pad_token_id)
        tokens = out[0, ids.shape[1]:].tolist()
        texts = [tokenizer.decode(tokens[:k], skip_special_tokens=True) for k in range(1, len(tokens) + 1)]
        stop = next((k for k, seen in enumerate(texts, start=1) if done(seen)), len(tokens))
        assert text == tokenizer.decode(tokens[:stop], skip_special_tokens=True)
    assert len(set(ours)) > 1
