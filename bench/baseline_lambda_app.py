"""The plain FastAPI + Mangum Lambda app the issue measures DPMSF against: the same trivial functions, by hand."""

from fastapi import Body, FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/rest/services/hello-sync/")
def hello_sync(name: str = "world"):
    return {"hello": name}


@app.get("/rest/services/hello-async/")
async def hello_async(name: str = "world"):
    return {"hello": name}


@app.post("/rest/services/hello-sync/")
def post_sync(body: dict = Body(...)):  # noqa: B008  # FastAPI's documented way to take a JSON body
    return {"hello": body.get("name", "world")}


@app.post("/rest/services/hello-async/")
async def post_async(body: dict = Body(...)):  # noqa: B008
    return {"hello": body.get("name", "world")}


handler = Mangum(app)  # lifespan="auto": the default, as most tutorials deploy it
handler_lifespan_off = Mangum(app, lifespan="off")
