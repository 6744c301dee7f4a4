"""Intent classification quality: the converted rag-intent-classifier head on the MiniLM encoder labels
unambiguous queries written here, one per intent, for 20 different intents of its label map."""
from __future__ import annotations

import json

import pytest

from corert.engines.onnx.plugin import make_engine
from corert.models.store import ModelStore

QUERIES = {
    "weather": "what's the weather going to be like in chicago tomorrow",
    "alarm": "set an alarm to wake me up at 6:30 am",
    "tell_joke": "tell me something funny, a joke please",
    "translate": "how do you say good morning in japanese",
    "book_flight": "book me a flight from boston to denver next friday",
    "play_music": "play some jazz music in the living room",
    "timer": "start a ten minute timer for the pasta",
    "calculator": "what is 45 multiplied by 12",
    "restaurant_reservation": "reserve a table for four at olive garden at 7 pm",
    "pay_bill": "i want to pay my electricity bill now",
    "flip_coin": "flip a coin for me, heads or tails",
    "roll_dice": "roll a six sided die",
    "what_is_your_name": "what should i call you, what's your name",
    "greeting": "hello there, how are you doing today",
    "goodbye": "goodbye, talk to you later",
    "recipe": "how do i make chicken tikka masala, give me the recipe",
    "traffic": "is there a lot of traffic on the highway to work right now",
    "report_lost_card": "i lost my credit card and need to report it",
    "exchange_rate": "what is the exchange rate between dollars and euros",
    "shopping_list": "what's on my shopping list",
}


@pytest.fixture(scope="module")
def classifier_path():
    return ModelStore().resolve("intent-minilm")


@pytest.mark.parametrize("variant", ["q8", "stock"])
def test_scores_are_a_distribution_over_the_label_map(classifier_path, variant):
    """The converted head ends in a softmax over the label map the conversion wrote: asked for every label, a
    classification lists each exactly once, best first, with scores that sum to 1."""
    labels = json.loads((classifier_path.parent / "labels.json").read_text())["labels"]
    model = make_engine(variant).load(classifier_path, "classify")
    assert list(model.labels) == labels
    result = model.classify(list(QUERIES.values())[:4], top_k=len(labels) + 10)  # more than there are: all
    for r in result.results:
        assert sorted(x.label for x in r.top) == sorted(labels)
        scores = [x.score for x in r.top]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1.0) < 1e-4
        assert (r.label, r.score) == (r.top[0].label, max(scores))  # a classification is its best label


@pytest.mark.parametrize("variant", ["q8", "stock"])
def test_labels_unambiguous_queries(classifier_path, variant):
    model = make_engine(variant).load(classifier_path, "classify")
    result = model.classify(list(QUERIES.values()), top_k=3)
    got = dict(zip(QUERIES, result.labels))
    wrong = {want: label for want, label in got.items() if label != want}
    assert len(QUERIES) - len(wrong) >= 18, wrong
    for r in result.results:  # probabilities: sorted, in (0, 1], top 3
        assert len(r.top) == 3 and 1.0 >= r.top[0].score >= r.top[1].score >= r.top[2].score > 0
    print(f"\n{variant}: {len(QUERIES) - len(wrong)}/20 correct; wrong: {wrong}")
