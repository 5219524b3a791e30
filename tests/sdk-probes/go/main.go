// Command go-sdk-probe resolves credentials exactly as an unmodified Go app
// does (the AWS SDK for Go v2 default chain, whose container credentials
// provider reads AWS_CONTAINER_CREDENTIALS_FULL_URI and
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE), calls STS GetCallerIdentity at the
// endpoint in STS_ENDPOINT and prints the reply as one line of JSON:
// {"Arn":"...","Account":"...","UserId":"..."}. Errors go to stderr with a
// non-zero exit.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "go-sdk-probe:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	endpoint := os.Getenv("STS_ENDPOINT")
	if endpoint == "" {
		return fmt.Errorf("STS_ENDPOINT is not set")
	}
	// Region comes from AWS_REGION through the default config.
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return fmt.Errorf("loading the default config: %w", err)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.BaseEndpoint = aws.String(endpoint)
	})
	out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return fmt.Errorf("GetCallerIdentity: %w", err)
	}
	line, err := json.Marshal(struct {
		Arn     string
		Account string
		UserId  string
	}{
		Arn:     aws.ToString(out.Arn),
		Account: aws.ToString(out.Account),
		UserId:  aws.ToString(out.UserId),
	})
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}
