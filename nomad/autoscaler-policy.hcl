# ACL policy for the stack autoscaler's token: read the API jobs and change
# their counts, and keep the splitters' canaries (the gateway's routes variable
# and the canaries' state). With BatchAPIs (`kind: BatchAPI`) it also submits and purges one batch
# job per BatchAPI job (`<project>-batch-<job id>`, from the worker template `stack up` writes into
# nomad/jobs/<project>-autoscaler/batch/<api>): add "submit-job" for those; otherwise nothing else.
#
#   nomad acl policy apply -description "stack autoscaler" stack-autoscaler autoscaler-policy.hcl
#   nomad acl token create -name stack-autoscaler -policy stack-autoscaler -type client
#   nomad var put nomad/jobs/<project>-autoscaler token=<the token's Secret ID>
namespace "default" {
  capabilities = ["read-job", "scale-job"]
  # With BatchAPIs only: capabilities = ["read-job", "scale-job", "submit-job"]

  variables {
    path "nomad/jobs/*" {
      capabilities = ["read", "write", "list"]
    }
  }
}
