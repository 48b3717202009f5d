# ACL policy for the stack autoscaler's token: read the API jobs and change
# their counts, and keep the splitters' canaries (the gateway's routes variable
# and the canaries' state); nothing else (no submitting or stopping jobs).
#
#   nomad acl policy apply -description "stack autoscaler" stack-autoscaler autoscaler-policy.hcl
#   nomad acl token create -name stack-autoscaler -policy stack-autoscaler -type client
#   nomad var put nomad/jobs/<project>-autoscaler token=<the token's Secret ID>
namespace "default" {
  capabilities = ["read-job", "scale-job"]

  variables {
    path "nomad/jobs/*" {
      capabilities = ["read", "write", "list"]
    }
  }
}
