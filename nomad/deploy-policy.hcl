# ACL policy for the token of whoever runs `stack up/status/logs/scale/down --nomad`:
# register and stop the project's jobs, follow their deployments, read allocation
# logs, scale, and read the nodes (the GPU check before a GPU job is registered).
#   nomad acl policy apply -description "stack deploy" stack-deploy nomad/deploy-policy.hcl
#   nomad acl token create -name stack-deploy -policy stack-deploy -type client
namespace "default" {
  capabilities = ["submit-job", "read-job", "list-jobs", "scale-job", "read-job-scaling", "read-logs", "dispatch-job"]

  # `stack up --nomad` writes each API job's keys, the gateway's splitter routes and `stack split`'s
  # weights to variables under nomad/jobs/<project>-*; `stack status` reads the canaries' there.
  variables {
    path "nomad/jobs/*" {
      capabilities = ["read", "write", "destroy", "list"]
    }
  }
}

node {
  policy = "read"
}

agent {
  policy = "read"
}
