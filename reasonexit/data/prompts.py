"""Prompt templates in the style reasoning models are evaluated with.

The bundled testbed model is trained on exactly :data:`MATH_TEMPLATE` applied to synthetic
problems, so the same text reaches it at evaluation time.
"""

MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

GSM8K_TEMPLATE = MATH_TEMPLATE

CHOICE_TEMPLATE = (
    "{problem}\nPlease reason step by step, and put the letter of your final choice (A, B, C or D) within \\boxed{{}}."
)

TEMPLATES: dict[str, str] = {
    "math": MATH_TEMPLATE,
    "gsm8k": GSM8K_TEMPLATE,
    "choice": CHOICE_TEMPLATE,
}


def format_prompt(problem: str, style: str = "math") -> str:
    """Return the user message for ``problem`` in the given template style."""
    try:
        template = TEMPLATES[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(TEMPLATES)}") from None
    return template.format(problem=problem.strip())
