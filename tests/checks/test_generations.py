from kd_edge.checks.generations import degeneration, distinct, held_out_prompts, repeated_share


def test_a_loop_repeats_its_ngrams_and_varied_text_does_not():
    loop = [5, 6, 7, 8] * 8  # "and I am, and I am, ..."
    assert repeated_share(loop) == 25 / 29  # 29 4-grams, 4 distinct: the other 25 occurred before
    assert repeated_share(list(range(32))) == 0.0
    assert distinct(loop) == 4 / 31 and distinct(list(range(32))) == 1.0
    assert repeated_share([1, 2, 3]) == 0.0 and distinct([1]) == 1.0  # too short to measure: not a loop


def test_degeneration_counts_the_continuations_that_loop():
    loop, varied = [5, 6, 7, 8] * 8, list(range(100, 132))
    half = list(range(100, 116)) + [1, 2, 3, 4] * 4  # 16 varied tokens, then a loop: 9 of 29 4-grams repeat
    d = degeneration([loop, varied, half], threshold=0.5)
    assert d["looping_prompts"] == 1 and d["sample_prompts"] == 3
    assert repeated_share(half) == 9 / 29
    assert d["repeated_4grams"] == (25 / 29 + 0 + 9 / 29) / 3
    assert degeneration([half], threshold=0.3)["looping_prompts"] == 1


def test_prompts_are_the_first_texts_long_enough_cut_to_the_same_length():
    import numpy as np

    texts = [np.arange(3), np.arange(10, 30), np.arange(40, 45), np.arange(50, 70), np.arange(80, 99)]
    assert held_out_prompts(texts, 2, 8) == [list(range(10, 18)), list(range(50, 58))]
