# Added so the seed's Decorators snippet runs on its own: the app it registers on, and app.run() below.
from otter import Otter

app = Otter()

from marshmallow import fields, validate
from otter.decorators import use_args

login_args = {
    "password": fields.Str(required=True, validate=validate.Length(min=8)),
    "email": fields.Email(required=True)
}

@app.add_rpc("auth.login")
@use_args(login_args)
def login(comm, data):
    return {"args": data}

# Added so the seed's Decorators snippet runs on its own.
app.run("amqp://guest:guest@127.0.0.1/", debug=True)
