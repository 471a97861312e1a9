"""A Flask app with a WebSocket echo (flask-sock) and a server-sent events stream.

    /          a page saying which worker answered (JSON)
    /echo      WebSocket: every message comes back as it was sent
    /events    text/event-stream: one `tick N` event every `?every=` seconds (default 1),
               forever, until the client leaves or the server ends the stream
"""

import os
import time

from flask import Flask, Response, jsonify, request
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


@app.get("/")
def index():
    return jsonify(app="wsecho", pid=os.getpid())


@sock.route("/echo")
def echo(ws):
    while True:
        message = ws.receive()
        if message is None:
            break
        ws.send(message)


@app.get("/events")
def events():
    every = float(request.args.get("every", "1"))

    def generate():
        yield f"event: hello\ndata: {os.getpid()}\n\n"
        number = 0
        while True:
            time.sleep(every)
            yield f"data: tick {number}\n\n"
            number += 1

    return Response(generate(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache"})


application = app
