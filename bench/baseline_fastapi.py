"""The plain-FastAPI equivalent of the bench plugin: what users would otherwise write by hand."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello-async")
async def hello_async():
    return {"hello": "world"}


@app.get("/hello-sync")
def hello_sync():
    return {"hello": "world"}
