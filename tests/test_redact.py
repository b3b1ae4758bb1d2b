from __future__ import annotations

import pytest

from watchdog_d.logs.redact import MASK, redact, redact_url

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ01234567"
GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
PAT = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"
SK = "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp"


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"login with {HF} ok", HF),
        (f"HF_TOKEN={HF}", HF),
        (f"push {GHP}", GHP),
        (f"gho_{'x' * 36} and ghs_{'y' * 36}", "x" * 36),
        (f"token {PAT}", PAT),
        ("key id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
        ("sts ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz' x", "dXNlcjpwYXNz"),
        ("sent Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("password=hunter2 next", "hunter2"),
        ("passwd: hunter2", "hunter2"),
        ("secret=s3cr3t&user=bob", "s3cr3t"),
        ("token=abc", "abc"),
        ("api_key=abcdef123", "abcdef123"),
        ("apikey: abcdef123", "abcdef123"),
        ("db_password = 'p@ss word'", "p@ss word"),
        ('{"password": "hunter2", "user": "bob"}', "hunter2"),
        ("{'api_key': 'k-123'}", "k-123"),
        ("run.py --password hunter2 --lr 3", "hunter2"),
        ("run.py --hf-token=abc123", "abc123"),
        (f"slack {SLACK}", SLACK),
        (f"openai {SK}", SK),
        ("fetch https://alice:s3cret@example.com/repo.git", "s3cret"),
        ("postgres://admin:p@ss@db.internal:5432/x", "p@ss"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4", "SflKxwRJ"),
    ],
)
def test_secret_is_hidden(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_shapes_are_kept() -> None:
    assert redact("Authorization: Bearer abc") == f"Authorization: Bearer {MASK}"
    assert redact('"password": "x"') == f'"password": "{MASK}"'
    assert redact("secret=s3&user=bob") == f"secret={MASK}&user=bob"
    assert redact("https://alice:pw@example.com/p") == f"https://{MASK}@example.com/p"


def test_private_key_block() -> None:
    text = (
        "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234\nabcd\n"
        "-----END RSA PRIVATE KEY-----\nafter"
    )
    assert redact(text) == f"before\n{MASK}\nafter"
    # an excerpt cut before the END line still hides the rest
    assert redact("x\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk") == f"x\n{MASK}"
    # a bare PEM body line (excerpt started inside the block) is hidden, a digest is not
    pem = "MIIEowIBAAKCAQEAx5Wq9+/Zk3f8Jr0dP1nHq7mN0aBcDeFgHiJkLmNoPqRsTuVwXy"
    digest = "a" * 64
    assert redact(f"{pem}\n{digest}") == f"{MASK}\n{digest}"


@pytest.mark.parametrize(
    "line",
    [
        "step=10 loss=0.5 error_rate=0.1 tokens=4096",
        "max_new_tokens=8 num_tokens: 512 tokenizer=gpt2",
        "eos_token=</s> pad_token=<pad> pad_token_id=0",
        "[rank1]: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "NCCL WARN Timeout at NCCL work: 42, last enqueued NCCL work: 42",
        "see https://example.com/@user and git@github.com:org/repo.git",
        "json://127.0.0.1:8080/hook",
        "HF_HUB_ENABLE_HF_TRANSFER=1 hf_transfer installed; sk-learn",
        "sha256 " + "ab" * 32,
        "--token-file /etc/watchdog/token --max-tokens 8",
        "",
    ],
)
def test_normal_lines_untouched(line: str) -> None:
    assert redact(line) == line


def test_idempotent() -> None:
    text = f"HF_TOKEN={HF} password=x Authorization: Bearer y https://u:p@h/x"
    once = redact(text)
    assert redact(once) == once
    assert "]]" not in once


@pytest.mark.parametrize(
    "url, shown",
    [
        ("json://127.0.0.1:8080/hook/s3cret?token=x", "json://127.0.0.1:8080/…"),
        ("json://user:pw@127.0.0.1:8080/hook", "json://127.0.0.1:8080/…"),
        ("jsons://hooks.example.com", "jsons://hooks.example.com"),
        ("dingtalk://abcdef0123456789/secret", "dingtalk://…"),
        ("mailtos://bob:pw@gmail.com?to=x@y.z", "mailtos://gmail.com/…"),
        ("tgram://123456:ABCDEF/987", "tgram://…"),
        ("not a url hf_x", MASK),
        ("", MASK),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
