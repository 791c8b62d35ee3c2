"""``formula-lite``: generated financial-formula questions with learnable house conventions.

Offline and self-contained: every question is generated from a seeded table of made-up company
figures (money in thousands of dollars).  Sixteen kinds of question (margins, returns, liquidity
and leverage ratios, growth, CAGR, EPS, payout, P/E, coverage, turnover).  The questions never
say how the answer is to be expressed; the task follows fixed *house conventions*, which the
feedback on a wrong answer reveals and which a playbook (ACE) or an instruction (GEPA) can learn:

- margins, returns, growth rates, CAGR and the payout ratio are **percentages** (15.3, not 0.153);
- liquidity, leverage, coverage, turnover ratios and P/E are plain numbers ("times");
- ROE, ROA and the turnover ratios divide by the **average** of the opening and closing balance;
  debt-to-equity uses the closing equity;
- CAGR is annualised over the number of years *between* the two fiscal years;
- EPS is in dollars per share (figures are in thousands, share counts in millions).

Scoring: the last number in the answer (``$``, ``%`` and thousands separators ignored) is correct
when it is within ``max(0.01, 1% of |expected|)`` of the expected value (score 1, else 0).
Feedback says what was expected and what was seen (and when the two differ by a factor of about
100, that percent and fraction were probably confused).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flashevolve.tasks.base import Example, MetricResult, PromptTask

SEED_INSTRUCTION = (
    "Answer the financial question. Work it out briefly, then give the final number alone on "
    "the last line."
)
DESCRIPTION = (
    "Financial-formula questions about made-up companies (money in thousands of dollars). Each "
    "answer is one number, checked within max(0.01, 1%) of the expected value. The expected "
    "answers follow fixed house conventions (how a result is expressed, which balance a ratio "
    "divides by, how growth is annualised, units) that the questions do not state; the feedback "
    "on a wrong answer shows the expected value."
)

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_PREFIXES = ("North", "Blue", "Iron", "Silver", "Cedar", "Harbor", "Summit", "Red", "Pine", "Lake",
             "Stone", "Bright", "Maple", "Granite", "Coastal", "Prairie")  # fmt: skip
_SUFFIXES = ("wind Logistics", "field Foods", "gate Systems", "ridge Retail", "brook Energy",
             "point Labs", "stone Media", "view Health", "crest Motors", "way Apparel")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Company:
    name: str
    year: int
    revenue: int
    revenue_prev: int
    revenue_base: int  # four fiscal years before ``year``
    cogs: int
    operating_income: int
    interest: int
    net_income: int
    assets_open: int
    assets_close: int
    equity_open: int
    equity_close: int
    current_assets: int
    current_liabilities: int
    inventory_open: int
    inventory_close: int
    debt: int
    shares_m: float  # weighted-average shares, millions
    dividends: int
    price: float  # dollars per share


def make_company(rng: random.Random) -> Company:
    revenue = rng.randrange(20_000, 900_000)
    cogs = int(revenue * rng.uniform(0.45, 0.75))
    operating_income = int(revenue * rng.uniform(0.05, 0.22))
    interest = max(50, int(operating_income * rng.uniform(0.05, 0.3)))
    net_income = int((operating_income - interest) * rng.uniform(0.7, 0.8))
    assets_close = int(revenue * rng.uniform(0.8, 2.0))
    equity_close = int(assets_close * rng.uniform(0.3, 0.6))
    current_liabilities = int(assets_close * rng.uniform(0.1, 0.25))
    inventory_close = int(cogs * rng.uniform(0.08, 0.25))
    eps_target = rng.uniform(0.5, 6.0)
    return Company(
        name=rng.choice(_PREFIXES) + rng.choice(_SUFFIXES),
        year=rng.randrange(2015, 2025),
        revenue=revenue,
        revenue_prev=int(revenue / rng.uniform(0.9, 1.3)),
        revenue_base=int(revenue / rng.uniform(1.1, 2.2)),
        cogs=cogs,
        operating_income=operating_income,
        interest=interest,
        net_income=net_income,
        assets_open=int(assets_close / rng.uniform(0.95, 1.2)),
        assets_close=assets_close,
        equity_open=int(equity_close / rng.uniform(0.95, 1.2)),
        equity_close=equity_close,
        current_assets=int(current_liabilities * rng.uniform(0.9, 2.5)),
        current_liabilities=current_liabilities,
        inventory_open=int(inventory_close / rng.uniform(0.85, 1.2)),
        inventory_close=inventory_close,
        debt=int(equity_close * rng.uniform(0.2, 1.5)),
        shares_m=round(net_income / 1000 / eps_target, 2) or 0.01,
        dividends=int(net_income * rng.uniform(0.1, 0.6)),
        price=round(eps_target * rng.uniform(8, 30), 2),
    )


def _k(value: int) -> str:
    return f"${value:,} thousand"


def _of(name: str) -> str:
    """The possessive of a company name ("Harbor Foods'", "Iron Labs'", "Acme Corp's")."""
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _avg(a: float, b: float) -> float:
    return (a + b) / 2


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    unit: str  # "percent", "times" or "dollars"
    question: Callable[[Company], str]
    answer: Callable[[Company], float]


KINDS: tuple[Kind, ...] = (
    Kind("gross_margin", "percent",
         lambda c: f"{c.name} reported fiscal {c.year} revenue of {_k(c.revenue)} and cost of goods "
                   f"sold of {_k(c.cogs)}. What was its gross margin?",
         lambda c: (c.revenue - c.cogs) / c.revenue * 100),
    Kind("operating_margin", "percent",
         lambda c: f"In fiscal {c.year}, {c.name} had revenue of {_k(c.revenue)} and operating "
                   f"income of {_k(c.operating_income)}. What was its operating margin?",
         lambda c: c.operating_income / c.revenue * 100),
    Kind("net_margin", "percent",
         lambda c: f"{c.name} earned net income of {_k(c.net_income)} on revenue of "
                   f"{_k(c.revenue)} in fiscal {c.year}. What was its net profit margin?",
         lambda c: c.net_income / c.revenue * 100),
    Kind("roe", "percent",
         lambda c: f"{c.name} earned net income of {_k(c.net_income)} in fiscal {c.year}. "
                   f"Shareholders' equity was {_k(c.equity_open)} at the start of the year and "
                   f"{_k(c.equity_close)} at the end. What was its return on equity?",
         lambda c: c.net_income / _avg(c.equity_open, c.equity_close) * 100),
    Kind("roa", "percent",
         lambda c: f"For fiscal {c.year}, {c.name} reported net income of {_k(c.net_income)}; "
                   f"total assets went from {_k(c.assets_open)} to {_k(c.assets_close)} over the "
                   "year. What was its return on assets?",
         lambda c: c.net_income / _avg(c.assets_open, c.assets_close) * 100),
    Kind("revenue_growth", "percent",
         lambda c: f"{_of(c.name)} revenue was {_k(c.revenue_prev)} in fiscal {c.year - 1} and "
                   f"{_k(c.revenue)} in fiscal {c.year}. What was its revenue growth?",
         lambda c: (c.revenue - c.revenue_prev) / c.revenue_prev * 100),
    Kind("cagr", "percent",
         lambda c: f"{_of(c.name)} revenue grew from {_k(c.revenue_base)} in fiscal {c.year - 4} to "
                   f"{_k(c.revenue)} in fiscal {c.year}. What was its compound annual growth "
                   "rate?",
         lambda c: ((c.revenue / c.revenue_base) ** (1 / 4) - 1) * 100),
    Kind("payout_ratio", "percent",
         lambda c: f"{c.name} paid dividends of {_k(c.dividends)} out of net income of "
                   f"{_k(c.net_income)} in fiscal {c.year}. What was its dividend payout ratio?",
         lambda c: c.dividends / c.net_income * 100),
    Kind("current_ratio", "times",
         lambda c: f"At the end of fiscal {c.year}, {c.name} had current assets of "
                   f"{_k(c.current_assets)} and current liabilities of "
                   f"{_k(c.current_liabilities)}. What was its current ratio?",
         lambda c: c.current_assets / c.current_liabilities),
    Kind("quick_ratio", "times",
         lambda c: f"At the end of fiscal {c.year}, {c.name} had current assets of "
                   f"{_k(c.current_assets)}, of which inventory was {_k(c.inventory_close)}, and "
                   f"current liabilities of {_k(c.current_liabilities)}. What was its quick "
                   "ratio?",
         lambda c: (c.current_assets - c.inventory_close) / c.current_liabilities),
    Kind("debt_to_equity", "times",
         lambda c: f"{c.name} carried total debt of {_k(c.debt)} at the end of fiscal {c.year}. "
                   f"Its equity was {_k(c.equity_open)} at the start of that year and "
                   f"{_k(c.equity_close)} at the end. What was its debt-to-equity ratio?",
         lambda c: c.debt / c.equity_close),
    Kind("interest_coverage", "times",
         lambda c: f"{c.name} had operating income (EBIT) of {_k(c.operating_income)} and "
                   f"interest expense of {_k(c.interest)} in fiscal {c.year}. What was its "
                   "interest coverage ratio?",
         lambda c: c.operating_income / c.interest),
    Kind("inventory_turnover", "times",
         lambda c: f"{_of(c.name)} cost of goods sold in fiscal {c.year} was {_k(c.cogs)}. "
                   f"Inventory was {_k(c.inventory_open)} at the start of the year and "
                   f"{_k(c.inventory_close)} at the end. What was its inventory turnover?",
         lambda c: c.cogs / _avg(c.inventory_open, c.inventory_close)),
    Kind("asset_turnover", "times",
         lambda c: f"{c.name} had fiscal {c.year} revenue of {_k(c.revenue)}; its total assets "
                   f"were {_k(c.assets_open)} at the start of the year and "
                   f"{_k(c.assets_close)} at the end. What was its asset turnover?",
         lambda c: c.revenue / _avg(c.assets_open, c.assets_close)),
    Kind("eps", "dollars",
         lambda c: f"{c.name} reported net income of {_k(c.net_income)} for fiscal {c.year}, "
                   f"with {c.shares_m:,} million weighted-average shares outstanding. What were "
                   "its earnings per share?",
         lambda c: c.net_income * 1000 / (c.shares_m * 1_000_000)),
    Kind("pe_ratio", "times",
         lambda c: f"{_of(c.name)} shares trade at ${c.price:,.2f}. For fiscal {c.year} it earned "
                   f"net income of {_k(c.net_income)} with {c.shares_m:,} million "
                   "weighted-average shares. What is its price-to-earnings ratio?",
         lambda c: c.price / (c.net_income * 1000 / (c.shares_m * 1_000_000))),
)  # fmt: skip
KIND_BY_NAME: Mapping[str, Kind] = {k.name: k for k in KINDS}


def last_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators, ``$`` and ``%`` ignored)."""
    found = _NUMBER_RE.findall(text or "")
    for raw in reversed(found):
        try:
            return float(raw.replace(",", ""))
        except ValueError:
            continue
    return None


def tolerance(expected: float) -> float:
    return max(0.01, 0.01 * abs(expected))


def formula_metric(example: Example, output: str) -> MetricResult:
    expected = float(example.reference["answer"])
    got = last_number(output)
    if got is None:
        return MetricResult(0.0, f"No number found in the answer; expected {expected:.2f}.")
    details = {"expected": expected, "got": got, "kind": example.reference["kind"]}
    if abs(got - expected) <= tolerance(expected):
        return MetricResult(1.0, f"Correct: {got:g} matches the expected {expected:.2f}.", details)
    hint = ""
    if got and expected and 80 <= abs(expected / got) <= 125:
        hint = " The answer is about 100 times too small: give a percentage, not a fraction."
    elif got and expected and 80 <= abs(got / expected) <= 125:
        hint = " The answer is about 100 times too large: give a plain ratio, not a percentage."
    return MetricResult(0.0, f"Wrong: expected {expected:.2f}, got {got:g}.{hint}", details)


def _render(components: Mapping[str, str], example: Example) -> list[dict[str, str]]:
    system = next(iter(components.values())) if len(components) == 1 else "\n\n".join(
        f"## {name}\n{text}" for name, text in components.items()
    )  # fmt: skip
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": str(example.inputs["question"])},
    ]


def make_examples(n: int, rng: random.Random, prefix: str) -> list[Example]:
    """``n`` questions, the kinds dealt round-robin from a seeded shuffle."""
    order = list(KINDS)
    out: list[Example] = []
    for i in range(n):
        if i % len(order) == 0:
            rng.shuffle(order)
        kind = order[i % len(order)]
        company = make_company(rng)
        expected = round(kind.answer(company), 4)
        question = f"{kind.question(company)} Answer with a number."
        out.append(
            Example(
                f"{prefix}-{i}",
                {"question": question},
                {"answer": expected, "kind": kind.name, "unit": kind.unit},
                {"kind": kind.name, "company": company.name},
            )
        )
    return out


def formula_lite(
    n_train: int = 64,
    n_val: int = 48,
    n_test: int = 64,
    seed: int = 0,
    *,
    instruction: str = SEED_INSTRUCTION,
    max_tokens: int | None = 512,
    temperature: float | None = 0.0,
) -> PromptTask:
    """The ``formula-lite`` task (module docstring); splits are disjoint draws from one seed."""
    if n_train < 1 or n_val < 1 or n_test < 0:
        raise ValueError("formula-lite needs n_train >= 1, n_val >= 1 and n_test >= 0")
    rng = random.Random(f"formula-lite:{seed}")
    return PromptTask(
        "formula-lite",
        train=make_examples(n_train, rng, "fl-train"),
        val=make_examples(n_val, rng, "fl-val"),
        test=make_examples(n_test, rng, "fl-test"),
        seed={"instruction": instruction},
        metric=formula_metric,
        render=_render,
        description=DESCRIPTION,
        max_tokens=max_tokens,
        temperature=temperature,
    )
