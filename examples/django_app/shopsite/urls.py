from django.contrib.auth.views import LoginView, LogoutView
from django.urls import path
from shop import views

urlpatterns = [
    path("", views.index, name="index"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(next_page="/"), name="logout"),
    path("products/<slug:sku>/", views.product, name="product"),
    path("checkout/", views.checkout, name="checkout"),
]
