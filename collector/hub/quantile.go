package hub

import (
	"math"
	"sort"
)

// Quantile is the Harrell–Davis estimate of the p-quantile of values: a
// weighted mean of all of them, the weights taken from the Beta((n+1)p,
// (n+1)(1-p)) distribution over the sorted values.
//
// Why not the textbook quantile: with five firms the usual definitions
// return one firm's value exactly (the median of an odd count always
// does), and the cluster promises that no single contribution is ever
// published. Harrell–Davis mixes every contribution into every quartile,
// so none is published as it is, and it is a well-studied, smoother and
// more efficient estimator for small samples than interpolation between
// two order statistics (Harrell & Davis, Biometrika 69, 1982).
func Quantile(values []float64, p float64) float64 {
	n := len(values)
	if n == 0 {
		return math.NaN()
	}
	x := append([]float64(nil), values...)
	sort.Float64s(x)
	if n == 1 {
		return x[0]
	}
	a, b := p*float64(n+1), (1-p)*float64(n+1)
	var sum, prev float64
	for i := 1; i <= n; i++ {
		cur := betaInc(a, b, float64(i)/float64(n))
		sum += (cur - prev) * x[i-1]
		prev = cur
	}
	return sum
}

// betaInc is the regularised incomplete beta function I_x(a, b), by the
// continued fraction of Numerical Recipes (6.4), which converges quickly
// on the side of x it is used on.
func betaInc(a, b, x float64) float64 {
	switch {
	case x <= 0:
		return 0
	case x >= 1:
		return 1
	}
	la, _ := math.Lgamma(a)
	lb, _ := math.Lgamma(b)
	lab, _ := math.Lgamma(a + b)
	front := math.Exp(a*math.Log(x) + b*math.Log1p(-x) + lab - la - lb)
	if x < (a+1)/(a+b+2) {
		return front * betaCF(a, b, x) / a
	}
	return 1 - front*betaCF(b, a, 1-x)/b
}

func betaCF(a, b, x float64) float64 {
	const eps, tiny = 1e-15, 1e-300
	fix := func(v float64) float64 {
		if math.Abs(v) < tiny {
			return tiny
		}
		return v
	}
	qab, qap, qam := a+b, a+1, a-1
	c, d := 1.0, 1/fix(1-qab*x/qap)
	h := d
	for m := 1; m <= 500; m++ {
		fm := float64(m)
		m2 := 2 * fm
		aa := fm * (b - fm) * x / ((qam + m2) * (a + m2))
		d = 1 / fix(1+aa*d)
		c = fix(1 + aa/c)
		h *= d * c
		aa = -(a + fm) * (qab + fm) * x / ((a + m2) * (qap + m2))
		d = 1 / fix(1+aa*d)
		c = fix(1 + aa/c)
		del := d * c
		h *= del
		if math.Abs(del-1) < eps {
			break
		}
	}
	return h
}
