"""A small Flask shop: Sentry plus SegmentIntegration, configured from the environment.

    SENTRY_DSN=https://<key>@o123.ingest.sentry.io/456 SEGMENT_WRITE_KEY=<write key> \
        python examples/flask_app/app.py

Then sign in and check out (the checkout has a bug: without an ``installments`` field it fails):

    curl -c jar -b jar http://127.0.0.1:5000/login/1001
    curl -c jar -b jar -X POST http://127.0.0.1:5000/checkout

Sentry gets the error with user 1001 on it, and Segment an "Error Captured" track call for
userId "1001". A guest's checkout fails the same way, but reaches Sentry only: it has no user id.

Environment: SENTRY_DSN, SEGMENT_WRITE_KEY (required by SegmentIntegration), SEGMENT_HOST (optional:
another Segment endpoint such as the EU region or a local receiver), SENTRY_ENVIRONMENT, SENTRY_RELEASE,
FLASK_SECRET_KEY (signs the session cookie; set your own outside development), PORT.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import sentry_sdk
from flask import Flask, abort, g, redirect, request, session
from sentry_sdk.integrations.flask import FlaskIntegration
from werkzeug.wrappers import Response

from sentry_segment_integration import SegmentIntegration

# The shop's users and cart; a real shop keeps these in its database.
USERS: Dict[int, str] = {1001: "ada@example.com", 1002: "grace@example.com"}
CART: List[Tuple[str, int, int]] = [("notebook", 1250, 2), ("fountain pen", 4800, 1)]  # item, cents, quantity


class PaymentError(Exception):
    """The payment could not be set up."""


def create_app() -> Flask:
    sentry_sdk.init(
        dsn=os.environ.get("SENTRY_DSN"),
        environment=os.environ.get("SENTRY_ENVIRONMENT"),
        release=os.environ.get("SENTRY_RELEASE"),
        # SegmentIntegration() reads SEGMENT_WRITE_KEY and, when set, SEGMENT_HOST.
        integrations=[FlaskIntegration(), SegmentIntegration()],
        # Lets Sentry record the user's IP address, headers and cookies (sentry-sdk 1.x and 2.x:
        # send_default_pii=True; 3.x does by default and has no such option). Segment only ever gets
        # the user id, the IP address, the page and the User-Agent (see the package's README).
        **({"send_default_pii": True} if sentry_sdk.VERSION.startswith(("1.", "2.")) else {}),
    )

    app = Flask(__name__)
    app.secret_key = os.environ.get("FLASK_SECRET_KEY", "development only, not secret")

    @app.before_request
    def load_signed_in_user() -> None:
        user_id: Optional[int] = session.get("user_id")
        g.user_id = user_id if user_id in USERS else None
        if g.user_id is not None:
            # What makes this request's errors Segment events: the user's id on Sentry's scope.
            sentry_sdk.set_user({"id": g.user_id, "email": USERS[g.user_id]})

    @app.route("/")
    def index() -> str:
        who = USERS[g.user_id] if g.user_id is not None else "guest"
        return f"Hello, {who}. Your cart has {sum(quantity for _, _, quantity in CART)} items.\n"

    @app.route("/login/<int:user_id>")
    def login(user_id: int) -> Response:
        if user_id not in USERS:
            abort(404)
        session["user_id"] = user_id
        return redirect("/")

    @app.route("/logout")
    def logout() -> Response:
        session.pop("user_id", None)
        return redirect("/")

    @app.route("/checkout", methods=["POST"])
    def checkout() -> str:
        total = sum(cents * quantity for _, cents, quantity in CART)
        installments = int(request.form.get("installments", "0"))  # the bug: 0 when the form omits it
        try:
            per_installment = total // installments
        except ZeroDivisionError as error:
            raise PaymentError(f"cannot split {total} cents into {installments} installments") from error
        return f"Charged {installments} x {per_installment} cents.\n"

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
