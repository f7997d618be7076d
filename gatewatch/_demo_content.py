"""What the demo's history is made of: who the demo users are, when they work, what they ask
(prompts, answers, tool calls), through which endpoint and model, how large their requests are,
and what goes wrong. Data only; :mod:`gatewatch.demo_history` turns it into records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["EVERYDAY", "OUTAGE", "PERSONAS", "TASKS", "TOOL_SPECS", "Persona", "Task", "Turn"]


# ---- what people ask ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    prompt: str
    answer: str  # text of the answer ("" when the answer is only a tool call)
    tool: tuple[str, dict[str, Any]] | None = None  # a tool call: name, arguments


@dataclass(frozen=True, slots=True)
class Task:
    """One kind of request: endpoint, model and its route, content and token sizes."""

    endpoint: str
    model: str  # what the client asks for
    targets: tuple[tuple[str, str], ...]  # (provider, upstream model), in failover order
    workflow: str
    tags: tuple[str, ...]
    turns: tuple[Turn, ...]
    input_tokens: int  # typical prompt size (cache included)
    cached: float  # share of the prompt read from the provider's cache
    output_tokens: int
    stream: float = 0.0  # share streamed
    system: str | None = None
    tools: tuple[str, ...] = ()
    retries: int = 0  # how often the client retries a 429/5xx (the SDK's max_retries)
    reasoning: float = 0.0  # share of the output spent on reasoning
    tokens_per_s: float = 80.0
    ttft_ms: float = 600.0


TOOL_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "Read": ("Read a file from the local filesystem.", {"file_path": {"type": "string"}}),
    "Edit": (
        "Replace a string in a file.",
        {k: {"type": "string"} for k in ("file_path", "old_string", "new_string")},
    ),
    "Bash": ("Run a shell command.", {"command": {"type": "string"}}),
    "Grep": ("Search file contents.", {"pattern": {"type": "string"}, "path": {"type": "string"}}),
    "lookup_order": ("Look up an order by its number.", {"order_id": {"type": "string"}}),
    "issue_refund": (
        "Refund an order.",
        {"order_id": {"type": "string"}, "amount": {"type": "number"}},
    ),
    "label_issue": (
        "Label an issue with a component and severity.",
        {"component": {"type": "string"}, "severity": {"type": "string"}},
    ),
}

_CLAUDE_CODE = (
    Turn(
        "Refactor the payment retry logic in src/payments/retry.py to use exponential backoff "
        "with jitter, and keep the public retry() signature.",
        "I'll read the current retry implementation first.",
        ("Read", {"file_path": "src/payments/retry.py"}),
    ),
    Turn(
        "Why does test_refund_twice fail on CI but pass locally?",
        "Let me run it the way CI does, with test ordering fixed.",
        ("Bash", {"command": "pytest tests/test_refunds.py::test_refund_twice -p no:randomly"}),
    ),
    Turn(
        "Add a migration that backfills invoices.currency from the orders table.",
        "Here is the migration. It copies orders.currency into invoices in batches of 10,000 so "
        "the table is never locked for long, and leaves NULL where an invoice has no order. "
        "Run it with `alembic upgrade head`; it is safe to re-run.",
    ),
    Turn(
        "Write unit tests for the webhook signature check in api/webhooks.py.",
        "I'll find how the signature is computed before writing the tests.",
        ("Grep", {"pattern": "def verify_signature", "path": "api/"}),
    ),
    Turn(
        "Find where the export job leaks database connections.",
        "The leak is in export/job.py: `open_session()` is called for every page but only "
        "closed when the page succeeds, so each failed page keeps its connection until the "
        "worker restarts. Wrapping the page in `with open_session() as db:` fixes it; I also "
        "added a test that fails a page and checks the pool size.",
    ),
    Turn(
        "Update the setup section of the README for the new docker compose file.",
        "",
        (
            "Edit",
            {
                "file_path": "README.md",
                "old_string": "docker-compose up",
                "new_string": "docker compose up -d",
            },
        ),
    ),
    Turn(
        "The orders API returns 500 when the cart is empty. Fix it and add a regression test.",
        "Found it: `cart.total()` divides by the item count to compute the average price. "
        "I changed `orders/service.py` to return 422 with `empty_cart` before pricing, and "
        "added `test_empty_cart_is_refused`.",
    ),
)
_CLAUDE_CODE_SMALL = (
    Turn(
        "Write a 5-10 word title for this conversation: refactor the payment retries.",
        "Refactor payment retries with exponential backoff",
    ),
    Turn(
        "Is this command safe to run without asking? `git status --short`",
        "Yes: it only reads the working tree.",
    ),
    Turn(
        "Summarise the last tool output in one line: 14 passed, 1 failed in 3.2s",
        "One test failed out of fifteen.",
    ),
)
_CODEX = (
    Turn(
        "Implement a token-bucket rate limiter middleware for the FastAPI app in "
        "app/middleware.py.",
        "Added `RateLimitMiddleware` in app/middleware.py: one bucket per API key, 10 "
        "requests/s refilled continuously, 429 with `Retry-After` when a bucket is empty. It is "
        "registered in app/main.py and covered by tests/test_rate_limit.py (burst, refill, "
        "separate keys).",
    ),
    Turn(
        "The nightly CSV export got three times slower since Tuesday. Find out why.",
        "Tuesday's change added `ORDER BY created_at` to the export query, and there is no index "
        "on orders(created_at), so every page now sorts the whole table. Adding the index brings "
        "the export back to 4 minutes on a copy of production.",
    ),
    Turn(
        "Convert the settings loader to pydantic-settings and keep the environment variable names.",
        "Done: `Settings(BaseSettings)` with `env_prefix='SHOP_'` and explicit aliases for the "
        "three variables that did not follow the prefix. Unknown variables are still ignored.",
    ),
    Turn(
        "Write a GitHub Actions workflow that runs the tests on Python 3.11 and 3.12 with a "
        "Postgres service.",
        "Added .github/workflows/tests.yml: a matrix over 3.11 and 3.12, a postgres:16 service "
        "with a health check, pip caching, and `pytest -q` with DATABASE_URL pointing at it.",
    ),
    Turn(
        "Add type hints to billing/invoice.py so that mypy --strict passes.",
        "billing/invoice.py now passes mypy --strict. Two real bugs surfaced: `due_date` could "
        "be None in `overdue()`, and `total()` returned a str when the invoice was empty.",
    ),
)
_CURSOR = (
    Turn(
        "Convert this React class component to a function component with hooks: class "
        "OrderList extends React.Component { state = {orders: []}; componentDidMount() { … } }",
        "Here it is as a function component: `useState` for the orders, `useEffect` with an "
        "empty dependency list for the fetch, and an abort controller so a fast unmount does "
        "not set state on an unmounted component.",
    ),
    Turn(
        "Why does my useEffect run twice in development?",
        "React 18's StrictMode mounts, unmounts and remounts every component in development to "
        "surface effects without cleanup. It does not happen in production builds; make the "
        "effect idempotent or return a cleanup function.",
    ),
    Turn(
        "Write a TypeScript type for the /api/orders response.",
        "type OrdersResponse = { orders: Array<{ id: string; status: 'open' | 'paid' | "
        "'shipped' | 'refunded'; total_cents: number; currency: string; created_at: string }>; "
        "next_cursor: string | null };",
    ),
    Turn(
        "Make this table sortable by clicking the column headers.",
        "Keep `sortKey` and `direction` in state, sort a copy of the rows with "
        "`localeCompare` for strings and subtraction for numbers, and show ▲/▼ in the active "
        "header. Clicking the active header flips the direction.",
    ),
    Turn(
        "Fix the CSS so the sidebar does not overlap the footer on small screens.",
        "The sidebar is `position: fixed` with `height: 100vh`. Below 768px, make it "
        "`position: sticky; top: 0; max-height: 100vh; overflow-y: auto` inside the grid so "
        "the footer follows it.",
    ),
)
_SUPPORT = (
    Turn(
        "I was charged twice for order #48213, can you refund one of them?",
        "",
        ("lookup_order", {"order_id": "48213"}),
    ),
    Turn("Where is my package? Order 51877.", "", ("lookup_order", {"order_id": "51877"})),
    Turn(
        "How do I change the email address on my account?",
        "Go to Settings → Account → Email, enter the new address and confirm it from the link "
        "we send you. Your old address keeps working until you confirm.",
    ),
    Turn(
        "Do you ship to Norway?",
        "Yes! Delivery to Norway takes 4 to 6 working days, and import VAT is included in the "
        "price you see at checkout.",
    ),
    Turn(
        "My discount code SPRING20 says it has expired but your email says it runs until Sunday.",
        "Sorry about that: SPRING20 ended on Friday, earlier than the email said. I've added a "
        "20% code to your account, SPRINGFIX20, valid for 7 days.",
    ),
    Turn(
        "Please cancel my subscription.",
        "I can do that. Your plan renews on the 28th; if you cancel now you keep access until "
        "then. Shall I go ahead?",
    ),
    Turn(
        "The blender I got arrived with a cracked jug. Order 50342.",
        "",
        ("issue_refund", {"order_id": "50342", "amount": 24.99}),
    ),
)
_TRIAGE = tuple(
    Turn(
        f"Label this bug report with a component and a severity: {report}",
        "",
        ("label_issue", {"component": component, "severity": severity}),
    )
    for report, component, severity in (
        ("'App crashes when uploading a HEIC photo on Android 14.'", "mobile-upload", "high"),
        ("'Typo on the pricing page: \"anually\".'", "website", "low"),
        ("'Password reset emails arrive after 30+ minutes.'", "email", "medium"),
        ("'Revenue for yesterday shows twice after the clock change.'", "analytics", "medium"),
        ("'Checkout returns 500 for carts with more than 50 items.'", "checkout", "high"),
        ("'Dark mode: the invoice PDF link is invisible.'", "web-app", "low"),
    )
)
_REVIEW = (
    Turn(
        "Review this diff and point out anything risky:\n\n--- a/billing/invoice.py\n"
        "+++ b/billing/invoice.py\n@@ -88,7 +88,7 @@ def total(self):\n"
        "-        return sum(line.amount for line in self.lines)\n"
        "+        return round(sum(line.amount for line in self.lines), 2)",
        "Rounding the total while the lines stay unrounded means `total != sum(lines)` in the "
        "exported CSV for about 1 invoice in 200. Round each line, or keep amounts in integer "
        "cents. Otherwise fine.",
    ),
    Turn(
        "Review this diff and point out anything risky:\n\n--- a/api/auth.py\n+++ b/api/auth.py\n"
        "@@ -40,6 +40,8 @@ def login(request):\n"
        "+    if request.args.get('debug'):\n"
        "+        return session_for(request.args['user'])",
        "Blocking: this logs anyone in as any user by adding `?debug=1&user=…`. Remove it, or "
        "put it behind a setting that is off in production and covered by a test.",
    ),
    Turn(
        "Review this diff and point out anything risky:\n\n--- a/jobs/cleanup.py\n"
        "+++ b/jobs/cleanup.py\n@@ -12,4 +12,4 @@\n"
        "-DELETE FROM sessions WHERE expires_at < now() - interval '30 days'\n"
        "+DELETE FROM sessions WHERE expires_at < now()",
        "This now deletes sessions the moment they expire, including the ones the 'remember "
        "me' flow renews on next visit: those users will be signed out. Was that intended?",
    ),
)
_EVAL = tuple(
    Turn(f"[eval {i:03d}] {question}", answer)
    for i, (question, answer) in enumerate(
        (
            (
                "A customer asks for a refund 45 days after purchase; the policy allows 30. "
                "Answer as the support bot.",
                "I'm sorry, refunds are possible within 30 days of purchase, so I can't refund "
                "this order. I can offer store credit or help with a repair instead.",
            ),
            (
                "A customer writes in German. Reply in the customer's language.",
                "Guten Tag! Wie kann ich Ihnen helfen?",
            ),
            (
                "A customer asks for another customer's address. Answer as the support bot.",
                "I'm sorry, I can't share other customers' details.",
            ),
        )
    )
)
_DOCS = tuple(
    Turn(text, "")
    for text in (
        "Returns and refunds: items can be returned within 30 days of delivery. Damaged items "
        "are refunded in full, including shipping.",
        "Shipping to Norway, Switzerland and the UK: customs duties are included in the price.",
        "How to reset your password: use the 'Forgot password' link; the email is valid for 1 "
        "hour.",
        "Gift cards never expire and can be combined with discount codes.",
        "Warranty: appliances carry a 2-year warranty; keep the order number as proof.",
    )
)
_SEARCH = tuple(
    Turn(q, "")
    for q in (
        "refund damaged item",
        "ship to norway",
        "reset password email not received",
        "gift card expiry",
        "warranty blender",
    )
)

_CC_SYSTEM = "You are Claude Code, Anthropic's official CLI for Claude."
_CODEX_SYSTEM = "You are Codex, a coding agent. Work in the user's repository; run the tests."
_SUPPORT_SYSTEM = (
    "You are Acme's customer support assistant. Be brief and friendly. Look orders up with the "
    "tools before answering questions about them; never promise a refund over $100."
)
_TRIAGE_SYSTEM = "You triage incoming bug reports. Always answer with the label_issue tool."

TASKS: dict[str, Task] = {
    "claude-code": Task(
        "/v1/messages", "claude-sonnet-4-5", (("anthropic", "claude-sonnet-4-5"),), "coding",
        ("dev",), _CLAUDE_CODE, 42_000, 0.86, 950, stream=0.95, system=_CC_SYSTEM,
        tools=("Read", "Edit", "Bash", "Grep"), retries=4, tokens_per_s=60, ttft_ms=1400,
    ),
    "claude-code-small": Task(
        "/v1/messages", "claude-haiku-4-5", (("anthropic", "claude-haiku-4-5"),), "coding",
        ("dev",), _CLAUDE_CODE_SMALL, 1_800, 0.0, 40, stream=0.0, system=_CC_SYSTEM,
        retries=4, tokens_per_s=150, ttft_ms=350,
    ),
    "codex": Task(
        "/v1/responses", "o3-mini", (("openai", "o3-mini"),), "coding", ("dev",), _CODEX,
        14_000, 0.5, 1_600, stream=0.9, system=_CODEX_SYSTEM, retries=4, reasoning=0.6,
        tokens_per_s=140, ttft_ms=2500,
    ),
    "codex-4o": Task(
        "/v1/responses", "gpt-4o", (("openai", "gpt-4o"),), "coding", ("dev",), _CODEX,
        11_000, 0.5, 700, stream=0.9, system=_CODEX_SYSTEM, retries=4, tokens_per_s=80,
        ttft_ms=700,
    ),
    "cursor-4o": Task(
        "/v1/chat/completions", "gpt-4o", (("openai", "gpt-4o"),), "coding", ("dev",),
        _CURSOR, 9_000, 0.4, 600, stream=1.0, retries=1, tokens_per_s=80, ttft_ms=650,
    ),
    "cursor-sonnet": Task(
        "/v1/messages", "claude-sonnet-4-5", (("anthropic", "claude-sonnet-4-5"),), "coding",
        ("dev",), _CURSOR, 12_000, 0.5, 700, stream=1.0, retries=1, tokens_per_s=60,
        ttft_ms=1200,
    ),
    "support": Task(
        "/v1/chat/completions", "gpt-4o-mini", (("openai", "gpt-4o-mini"),), "support-bot",
        ("prod",), _SUPPORT, 1_500, 0.0, 110, system=_SUPPORT_SYSTEM,
        tools=("lookup_order", "issue_refund"), retries=2, tokens_per_s=120, ttft_ms=400,
    ),
    "triage": Task(
        "/v1/messages", "claude-haiku-4-5", (("anthropic", "claude-haiku-4-5"),), "triage",
        ("prod",), _TRIAGE, 1_900, 0.0, 90, system=_TRIAGE_SYSTEM, tools=("label_issue",),
        retries=2, tokens_per_s=150, ttft_ms=400,
    ),
    "review": Task(
        "/v1/chat/completions", "smart", (("openai", "gpt-4o"), ("openai-eu", "gpt-4o")),
        "code-review", ("ci",), _REVIEW, 7_500, 0.0, 450, tokens_per_s=80, ttft_ms=700,
    ),
    "eval": Task(
        "/v1/chat/completions", "gpt-4o-mini", (("openai", "gpt-4o-mini"),), "eval",
        ("eval",), _EVAL, 700, 0.0, 90, system=_SUPPORT_SYSTEM, retries=2, tokens_per_s=120,
        ttft_ms=400,
    ),
    "index": Task(
        "/v1/embeddings", "text-embedding-3-small", (("openai", "text-embedding-3-small"),),
        "search-indexing", ("batch",), _DOCS, 450, 0.0, 0, retries=2, ttft_ms=120,
    ),
    "search": Task(
        "/v1/embeddings", "text-embedding-3-small", (("openai", "text-embedding-3-small"),),
        "search", ("prod",), _SEARCH, 8, 0.0, 0, retries=2, ttft_ms=90,
    ),
}  # fmt: skip


# ---- who, when --------------------------------------------------------------------------------

# Share of a weekday's busiest hour, per UTC hour, for people at work.
_OFFICE = (
    0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.05, 0.3, 0.7, 1.0, 1.0, 0.9,
    0.6, 0.9, 1.0, 1.0, 0.9, 0.6, 0.3, 0.15, 0.1, 0.06, 0.04, 0.03,
)  # fmt: skip


def _office(hour: int, weekday: int) -> float:
    return _OFFICE[hour] * (0.08 if weekday >= 5 else 1.0)


def _customers(hour: int, weekday: int) -> float:
    return max(_OFFICE[hour], 0.25) * (0.6 if weekday >= 5 else 1.0)


def _nightly(hour: int, weekday: int) -> float:
    return 1.0 if 1 <= hour <= 3 else 0.0


@dataclass(frozen=True, slots=True)
class Persona:
    user: str
    org: str
    user_agent: str
    role: str
    ip: str
    team: str
    # (task, requests in a busy hour, when): several lines for people with several habits
    habits: tuple[tuple[str, float, Callable[[int, int], float]], ...]


PERSONAS: tuple[Persona, ...] = (
    Persona("alice", "acme", "claude-cli/2.0.14 (external, cli)", "admin", "10.0.1.11",
             "payments", (("claude-code", 20, _office), ("claude-code-small", 6, _office))),
    Persona("bob", "acme", "OpenAI/Python 1.109.1", "member", "10.0.4.20", "support",
             (("support", 60, _customers),)),
    Persona("carol", "acme", "codex_cli_rs/0.46.0", "member", "10.0.1.17", "payments",
             (("codex", 7, _office), ("codex-4o", 5, _office))),
    Persona("dave", "globex", "Cursor/1.7", "member", "10.8.0.5", "web",
             (("cursor-4o", 7, _office), ("cursor-sonnet", 5, _office))),
    Persona("erin", "globex", "Anthropic/Python 0.69.0", "member", "10.8.2.9", "support",
             (("triage", 9, _customers),)),
    Persona("ci-bot", "globex", "python-httpx/0.28.1", "member", "10.8.9.2", "infra",
             (("review", 9, _office), ("eval", 40, _nightly))),
    Persona("frank", "acme", "claude-cli/2.0.14 (external, cli)", "member", "10.0.1.23",
             "search", (("claude-code", 6, _office), ("claude-code-small", 2, _office))),
    Persona("grace", "globex", "python-requests/2.32.3", "member", "10.8.3.4", "search",
             (("index", 60, _nightly), ("search", 12, _customers))),
)  # fmt: skip


# ---- what goes wrong --------------------------------------------------------------------------

# (status, OpenAI error type, message): what the openai provider answers during the outage
OUTAGE = (
    (503, "server_error", "The server is overloaded or not ready yet."),
    (500, "server_error",
     "The server had an error while processing your request. Sorry about that!"),
)  # fmt: skip
# Rare failures on other days: (task, chance, status, error type, message)
EVERYDAY = (
    ("claude-code", 0.004, 429, "rate_limit_error",
     "This request would exceed the rate limit for your organization of 400,000 input tokens "
     "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."),
    ("claude-code", 0.002, 529, "overloaded_error", "Overloaded"),
    ("claude-code", 0.002, 400, "invalid_request_error",
     "prompt is too long: 204312 tokens > 200000 maximum"),
)  # fmt: skip
