# Added so the seed's Blueprints snippets run: an app to register examples/blueprint.py on, and app.run().
from otter import Otter

try:  # imported as a package module, e.g. examples.blueprint_app:app
    from examples.blueprint import blueprint
except ImportError:  # run as a script: python examples/blueprint_app.py
    from blueprint import blueprint  # type: ignore[no-redef]

app = Otter()

app.register_blueprint(blueprint)

app.run("amqp://guest:guest@127.0.0.1/", debug=True)
