"""Azure Functions entry point (Python v2 model): registers one blueprint per DICOMweb area."""

import azure.functions as func

from dicomweb.api import (availability, http, inbox, jobs, manage, qido, rehydration, rendered, retrieve, stow, unknown,
                          uploads)

http.start_up()

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_blueprint(stow.blueprint)
app.register_blueprint(retrieve.blueprint)
app.register_blueprint(rendered.blueprint)
app.register_blueprint(qido.blueprint)
app.register_blueprint(manage.blueprint)
app.register_blueprint(uploads.blueprint)
app.register_blueprint(jobs.blueprint)
app.register_blueprint(availability.blueprint)
app.register_blueprint(rehydration.blueprint)
app.register_blueprint(inbox.blueprint)
app.register_blueprint(unknown.blueprint)  # last: it takes what no other route does
