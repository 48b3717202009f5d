"""FastAPI + uvicorn echo, one worker."""

import sys

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/")
async def echo(request: Request) -> dict:
    return await request.json()


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
