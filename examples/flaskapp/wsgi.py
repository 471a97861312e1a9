"""A small Flask app: pages, JSON, a form post and a streamed response."""

import os
import time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
NOTES: list[str] = []


@app.get("/")
def index():
    return f"<h1>railcar flask example</h1><p>{len(NOTES)} note(s)</p>\n"


@app.get("/health")
def health():
    return jsonify(status="ok", pid=os.getpid())


@app.post("/notes")
def add_note():
    text = request.form.get("text", "").strip()
    if not text:
        return jsonify(error="text is required"), 400
    NOTES.append(text)
    return jsonify(count=len(NOTES)), 201


@app.get("/notes")
def list_notes():
    return jsonify(notes=NOTES)


@app.get("/stream")
def stream():
    def generate():
        for number in range(5):
            yield f"tick {number}\n"
            time.sleep(0.1)
    return Response(generate(), mimetype="text/plain")


application = app
