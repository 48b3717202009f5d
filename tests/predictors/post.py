class Predictor:
    def __init__(self, config):
        self.log = config["log_file"]

    def predict(self, payload):
        return {"ok": True}

    def post_predict(self, response, payload):
        with open(self.log, "a") as f:
            f.write(f"{response.status} {payload['id']}\n")
