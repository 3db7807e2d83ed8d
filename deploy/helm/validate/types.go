package main

import (
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
)

// types maps "apiVersion/kind" to a new object of its Go type; a kind not listed is an error.
var types = map[string]func() any{
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                              func() any { return &corev1.Secret{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":     func() any { return &networkingv1.NetworkPolicy{} },

	"monitoring.coreos.com/v1/ServiceMonitor":          func() any { return &ServiceMonitor{} },
	"kafka.strimzi.io/v1/Kafka":                        func() any { return &Kafka{} },
	"kafka.strimzi.io/v1/KafkaNodePool":                func() any { return &KafkaNodePool{} },
	"kafka.strimzi.io/v1/KafkaTopic":                   func() any { return &KafkaTopic{} },
	"kafka.strimzi.io/v1/KafkaUser":                    func() any { return &KafkaUser{} },
	"mongodbcommunity.mongodb.com/v1/MongoDBCommunity": func() any { return &MongoDBCommunity{} },
}
