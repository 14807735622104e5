"""课程作业：起始代码生成与自动评分。Course assignments: starter generation and the autograder (learning_guide/)."""
