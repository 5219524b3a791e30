// Resolves credentials the way an unmodified app does (the container
// credentials provider reads AWS_CONTAINER_CREDENTIALS_FULL_URI and
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE), then calls STS GetCallerIdentity at
// the endpoint in STS_ENDPOINT and prints the JSON reply.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { fromContainerMetadata, fromHttp } from "@aws-sdk/credential-providers";

const provider = process.argv[2] === "fromHttp" ? fromHttp({}) : fromContainerMetadata({ timeout: 2000 });
const client = new STSClient({ region: process.env.AWS_REGION, endpoint: process.env.STS_ENDPOINT, credentials: provider });
const out = await client.send(new GetCallerIdentityCommand({}));
console.log(JSON.stringify({ Arn: out.Arn, Account: out.Account, UserId: out.UserId }));
