"""The shop's pages. Two have bugs: an unknown product, and checking out without ``installments``."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

PRODUCTS = {"notebook": 1250, "fountain-pen": 4800}  # price in cents


class PaymentError(Exception):
    """The payment could not be set up."""


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/index.html", {"products": sorted(PRODUCTS.items())})


def product(request: HttpRequest, sku: str) -> HttpResponse:
    cents = PRODUCTS[sku]  # the bug: an unknown product is a KeyError (a 500), not a 404
    return HttpResponse(f"{sku}: {cents / 100:.2f} EUR\n", content_type="text/plain")


@login_required
@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    total = sum(cents * int(request.POST.get(sku, "0")) for sku, cents in PRODUCTS.items())
    installments = int(request.POST.get("installments", "0"))  # the bug: 0 when the form omits it
    try:
        per_installment = total // installments
    except ZeroDivisionError as error:
        raise PaymentError(f"cannot split {total} cents into {installments} installments") from error
    return HttpResponse(f"Charged {installments} x {per_installment} cents.\n", content_type="text/plain")
