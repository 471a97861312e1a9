import os

from django.contrib import admin
from django.shortcuts import render
from django.urls import path


def index(request):
    return render(request, "index.html", {"pid": os.getpid(), "items": range(20)})


urlpatterns = [
    path("", index),
    path("admin/", admin.site.urls),
]
