"""Problems and answers: datasets, the synthetic generator, prompts, answer extraction and grading."""
