"""A small FastAPI shop: Sentry plus SegmentIntegration, configured from the environment.

    SENTRY_DSN=https://<key>@o123.ingest.sentry.io/456 SEGMENT_WRITE_KEY=<write key> \
        uvicorn examples.fastapi_app.app:app

(from the repository's root; ``python examples/fastapi_app/app.py`` does the same). Then sign in and check
out (the checkout has a bug: without an ``installments`` field it fails):

    curl -c jar -b jar http://127.0.0.1:8000/login/1001
    curl -c jar -b jar -X POST http://127.0.0.1:8000/checkout

Sentry gets the error with user 1001 on it, and Segment an "Error Captured" track call for
userId "1001". A guest's checkout fails the same way, but reaches Sentry only: it has no user id.
So does any visitor's ``/products/gift-card``, a product that is not in the catalogue.

Environment: SENTRY_DSN, SEGMENT_WRITE_KEY (required by SegmentIntegration), SEGMENT_HOST (optional:
another Segment endpoint such as the EU region or a local receiver), SENTRY_ENVIRONMENT, SENTRY_RELEASE,
SESSION_SECRET_KEY (signs the session cookie; set your own outside development), PORT (for
``python examples/fastapi_app/app.py`` only).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import sentry_sdk
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from pydantic import BaseModel
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration
from starlette.middleware.sessions import SessionMiddleware

from sentry_segment_integration import SegmentIntegration

# The shop's users, catalogue and cart; a real shop keeps these in its database.
USERS: Dict[int, str] = {1001: "ada@example.com", 1002: "grace@example.com"}
PRODUCTS: Dict[str, int] = {"notebook": 1250, "fountain-pen": 4800}  # price in cents
CART: List[Tuple[str, int]] = [("notebook", 2), ("fountain-pen", 1)]  # product, quantity


class PaymentError(Exception):
    """The payment could not be set up."""


class Checkout(BaseModel):
    """The checkout's JSON body; the client may send none."""

    installments: int = 0  # the bug: 0 when the client leaves it out


async def load_signed_in_user(request: Request) -> Optional[int]:
    """Runs for every request (a dependency of the whole app): the signed-in user's id, or None."""
    user_id = request.session.get("user_id")
    if user_id not in USERS:
        return None
    # What makes this request's errors Segment events: the user's id on Sentry's scope. Each request
    # has a scope of its own (sentry-sdk's ASGI middleware), also in the threads of sync routes.
    sentry_sdk.set_user({"id": user_id, "email": USERS[user_id]})
    return int(user_id)


def create_app() -> FastAPI:
    sentry_sdk.init(
        dsn=os.environ.get("SENTRY_DSN"),
        environment=os.environ.get("SENTRY_ENVIRONMENT"),
        release=os.environ.get("SENTRY_RELEASE"),
        # sentry-sdk enables the Starlette and FastAPI integrations by itself when FastAPI is installed;
        # named here so that their options are in one place (and 1.x wants both when one is configured).
        # SegmentIntegration() reads SEGMENT_WRITE_KEY and, when set, SEGMENT_HOST.
        integrations=[StarletteIntegration(), FastApiIntegration(), SegmentIntegration()],
        # Lets Sentry record the user's IP address, headers and cookies (sentry-sdk 1.x and 2.x:
        # send_default_pii=True; 3.x does by default and has no such option). Segment only ever gets
        # the user id, the IP address, the page and the User-Agent (see the package's README).
        **({"send_default_pii": True} if sentry_sdk.VERSION.startswith(("1.", "2.")) else {}),
    )

    app = FastAPI(title="shop", dependencies=[Depends(load_signed_in_user)])
    app.add_middleware(SessionMiddleware, secret_key=os.environ.get("SESSION_SECRET_KEY", "development only"))

    @app.get("/", response_class=PlainTextResponse)
    async def index(user_id: Optional[int] = Depends(load_signed_in_user)) -> str:
        who = USERS[user_id] if user_id is not None else "guest"
        return f"Hello, {who}. Your cart has {sum(quantity for _, quantity in CART)} items.\n"

    @app.get("/login/{user_id}")
    async def login(user_id: int, request: Request) -> RedirectResponse:
        if user_id not in USERS:
            raise HTTPException(status_code=404, detail="no such user")
        request.session["user_id"] = user_id
        return RedirectResponse("/", status_code=302)

    @app.get("/logout")
    async def logout(request: Request) -> RedirectResponse:
        request.session.pop("user_id", None)
        return RedirectResponse("/", status_code=302)

    @app.get("/products/{sku}", response_class=PlainTextResponse)
    async def product(sku: str) -> str:
        cents = PRODUCTS[sku]  # the bug: an unknown product is a KeyError (a 500), not a 404
        return f"{sku}: {cents / 100:.2f} EUR\n"

    # A plain function: FastAPI runs it in a worker thread, with the request's Sentry scope.
    @app.post("/checkout", response_class=PlainTextResponse)
    def checkout(order: Optional[Checkout] = None) -> str:
        total = sum(PRODUCTS[sku] * quantity for sku, quantity in CART)
        installments = (order or Checkout()).installments
        try:
            per_installment = total // installments
        except ZeroDivisionError as error:
            raise PaymentError(f"cannot split {total} cents into {installments} installments") from error
        return f"Charged {installments} x {per_installment} cents.\n"

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
